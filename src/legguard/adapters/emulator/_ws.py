"""The emulator's websockets, as ccxt.pro drives them: market streams (`SUBSCRIBE` to `<symbol>@depth`
diffs on `/stream/ws/<n>` for spot, `/fstream/public/ws/<n>` for USDⓈ-M), the spot WebSocket API's
`userDataStream.subscribe.signature` (`/ws-api/v3`), and the USDⓈ-M listenKey stream
(`/fstream/private/ws?listenKey=...`).

Each connection gets a queue drained by its own sender task, so publishing from the (synchronous) engine
glue never blocks and each client sees events in the order they happened.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from legguard.domain import Market, MarketKind

from . import _wire as w

_DEPTH_STREAM = re.compile(r"^([a-z0-9]+)@depth(@(?:0|100|250|500|1000)ms)?$")


class StreamHost(Protocol):
    """What the websockets need of the emulator they serve (it passes itself to `Hub`)."""

    api_key: str
    listen_key: str | None

    def notify(self) -> None: ...

    def now_ms(self) -> int: ...

    def markets(self, kind: MarketKind) -> list[Market]: ...

    def secret_matches(self, signature: str, payload: bytes) -> bool: ...


class _Session:
    def __init__(self, ws: web.WebSocketResponse, kind: MarketKind, role: str) -> None:
        self.ws = ws
        self.kind = kind
        self.role = role  # "market", "user" (listenKey stream) or "api" (spot WebSocket API)
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.depth: set[str] = set()  # subscribed stream names
        self.subscriptions: set[int] = set()  # spot user-data subscription ids on this connection
        self.listen_key: str | None = None
        self._sub_ids = itertools.count()

    def send(self, payload: Any) -> None:
        self.queue.put_nowait(json.dumps(payload, separators=(",", ":")))

    def next_subscription(self) -> int:
        return next(self._sub_ids)


class Hub:
    """Every open emulator websocket, and the fan-out of book diffs and user-data events to them."""

    def __init__(self, emulator: StreamHost) -> None:
        self.emulator = emulator
        self.sessions: set[_Session] = set()
        self._closers: set[asyncio.Task[Any]] = set()

    # --- publishing (synchronous: called from the engine glue) ---

    def depth(self, market: Market, event: dict[str, Any]) -> None:
        prefix = market.venue_symbol.lower() + "@depth"
        for s in self.sessions:
            if s.kind is market.kind and s.role == "market" and any(d.startswith(prefix) for d in s.depth):
                s.send(event)

    def spot_user(self, event: dict[str, Any]) -> None:
        for s in self.sessions:
            if s.role == "api":
                for sub in sorted(s.subscriptions):
                    s.send({"subscriptionId": sub, "event": event})

    def perp_user(self, event: dict[str, Any], listen_key: str | None = None) -> None:
        key = listen_key if listen_key is not None else self.emulator.listen_key
        if key is None:
            return
        for s in self.sessions:
            if s.role == "user" and s.listen_key == key:
                s.send(event)

    def close_user_streams(self, listen_key: str) -> None:
        for s in list(self.sessions):
            if s.role == "user" and s.listen_key == listen_key:
                self._close(s, WSCloseCode.POLICY_VIOLATION, b"listenKey expired")

    def drop(self, kind: MarketKind) -> None:
        """The `ws_drop` fault: every connection of this market goes away at once."""
        for s in list(self.sessions):
            if s.kind is kind:
                self._close(s, WSCloseCode.GOING_AWAY, b"emulator fault: ws_drop")

    def count(self, kind: MarketKind, role: str) -> int:
        """Open connections of one market and role ("market", "user", "api" with a user-data subscription)."""
        return sum(
            1
            for s in self.sessions
            if s.kind is kind
            and s.role == role
            and (role != "api" or s.subscriptions)
            and (role != "market" or s.depth)
        )

    def _close(self, session: _Session, code: int, reason: bytes) -> None:
        self.sessions.discard(session)
        session.queue.put_nowait(None)
        task = asyncio.ensure_future(session.ws.close(code=code, message=reason))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def aclose(self) -> None:
        for s in list(self.sessions):
            self._close(s, WSCloseCode.GOING_AWAY, b"emulator shutting down")
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)

    # --- connections ---

    async def _serve(self, request: web.Request, session: _Session, initial: list[str]) -> web.WebSocketResponse:
        ws = session.ws
        await ws.prepare(request)
        self.sessions.add(session)
        self.emulator.notify()
        sender = asyncio.create_task(self._sender(session))
        try:
            if initial:
                self._subscribe(session, initial, None)
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    if session.role == "api":
                        self._api_request(session, msg.data)
                    else:
                        self._market_request(session, msg.data)
                elif msg.type is WSMsgType.ERROR:
                    break
        finally:
            self.sessions.discard(session)
            session.queue.put_nowait(None)
            await sender
            self.emulator.notify()
        return ws

    async def _sender(self, session: _Session) -> None:
        while (text := await session.queue.get()) is not None:
            if session.ws.closed:
                return
            try:
                await session.ws.send_str(text)
            except ConnectionError:
                return

    async def market_stream(self, request: web.Request) -> web.WebSocketResponse:
        kind = MarketKind.SPOT if request.path.startswith("/stream/") else MarketKind.LINEAR
        tail = request.match_info.get("tail", "")
        if kind is MarketKind.LINEAR and tail and tail == self.emulator.listen_key:
            return await self._user(request, tail)  # the legacy /ws/<listenKey> form
        initial = [s for s in tail.split("/") if "@" in s]
        session = _Session(web.WebSocketResponse(), kind, "market")
        return await self._serve(request, session, initial)

    async def perp_user_stream(self, request: web.Request) -> web.WebSocketResponse:
        return await self._user(request, request.query.get("listenKey", ""))

    async def _user(self, request: web.Request, listen_key: str) -> web.WebSocketResponse:
        session = _Session(web.WebSocketResponse(), MarketKind.LINEAR, "user")
        if not listen_key or listen_key != self.emulator.listen_key:
            ws = session.ws
            await ws.prepare(request)
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"invalid listenKey")
            return ws
        session.listen_key = listen_key
        return await self._serve(request, session, [])

    async def spot_api(self, request: web.Request) -> web.WebSocketResponse:
        return await self._serve(request, _Session(web.WebSocketResponse(), MarketKind.SPOT, "api"), [])

    # --- market stream requests ---

    def _market_request(self, session: _Session, text: str) -> None:
        try:
            message = json.loads(text)
            method, params, rid = message.get("method"), message.get("params", []), message.get("id")
        except (ValueError, AttributeError):
            session.send({"error": {"code": 3, "msg": "Invalid JSON: expected a request object"}, "id": None})
            return
        if method == "SUBSCRIBE" and isinstance(params, list):
            self._subscribe(session, [str(p) for p in params], rid)
        elif method == "UNSUBSCRIBE" and isinstance(params, list):
            session.depth -= {str(p) for p in params}
            session.send({"result": None, "id": rid})
        elif method == "LIST_SUBSCRIPTIONS":
            session.send({"result": sorted(session.depth), "id": rid})
        else:
            session.send({"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": rid})

    def _subscribe(self, session: _Session, streams: list[str], rid: Any) -> None:
        symbols = {m.venue_symbol.lower() for m in self.emulator.markets(session.kind)}
        for stream in streams:
            match = _DEPTH_STREAM.match(stream)
            if match is None or match.group(1) not in symbols:
                # Only diff-depth streams are served; saying so beats a subscription that never delivers.
                session.send(
                    {"error": {"code": 2, "msg": f"Invalid request: stream {stream!r} is not served"}, "id": rid}
                )
                return
        session.send({"result": None, "id": rid})
        session.depth |= set(streams)
        self.emulator.notify()

    # --- spot WebSocket API ---

    def _api_request(self, session: _Session, text: str) -> None:
        try:
            message = json.loads(text)
            rid, method, params = message.get("id"), message.get("method"), message.get("params", {})
        except (ValueError, AttributeError):
            session.send({"id": None, "status": 400, "error": {"code": -1100, "msg": "Malformed request."}})
            return
        try:
            result = self._api_call(session, method, params if isinstance(params, dict) else {})
        except w.WireError as err:
            session.send({"id": rid, "status": err.status, "error": err.body()})
            return
        session.send({"id": rid, "status": 200, "result": result})

    def _api_call(self, session: _Session, method: Any, params: dict[str, Any]) -> dict[str, Any]:
        emulator = self.emulator
        if method == "ping":
            return {}
        if method == "time":
            return {"serverTime": emulator.now_ms()}
        if method == "userDataStream.subscribe.signature":
            if params.get("apiKey") != emulator.api_key:
                raise w.API_KEY_INVALID
            signature = params.get("signature")
            if not isinstance(signature, str):
                raise w.missing_param("signature")
            payload = "&".join(f"{k}={_ws_value(v)}" for k, v in sorted(params.items()) if k != "signature")
            if not emulator.secret_matches(signature, payload.encode()):
                raise w.BAD_SIGNATURE
            w.check_timestamp({k: _ws_value(v) for k, v in params.items()})
            sub = session.next_subscription()
            session.subscriptions.add(sub)
            emulator.notify()
            return {"subscriptionId": sub}
        if method == "userDataStream.unsubscribe":
            which = params.get("subscriptionId")
            if which is None:
                session.subscriptions.clear()
            else:
                session.subscriptions.discard(int(which))
            return {}
        raise w.WireError(400, -1000, f"Method {method!r} is not served by the legguard emulator.")


def _ws_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
