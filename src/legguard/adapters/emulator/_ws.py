"""The emulator's websockets, as ccxt.pro drives them: market streams (raw: `SUBSCRIBE` on `/stream/ws/<n>`
for spot, `/fstream/public/ws/<n>` or `/fstream/market/ws/<n>` for USDⓈ-M, or the streams named in the path;
combined: `/stream?streams=a/b` and `/fstream/stream?streams=a/b`, each event wrapped as
`{"stream": name, "data": event}`), the spot WebSocket API's `userDataStream.subscribe.signature`
(`/ws-api/v3`), and the USDⓈ-M listenKey stream (`/fstream/private/ws?listenKey=...`).

The market streams served are listed in `STREAMS` (docs/emulator.md is generated from it).

Each connection gets a queue drained by its own sender task, so publishing from the (synchronous) engine
glue never blocks and each client sees events in the order they happened; the REST side lets the senders
write (`Hub.flush`) before it answers, so an order's reports are on the wire ahead of any later answer about it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from legguard.domain import Market, MarketKind

from . import _wire as w

# Loop iterations `Hub.flush` gives the connections' senders before a REST answer leaves.
_FLUSH_PASSES = 3
_INTERVALS = "1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w"
# Stream name templates per market ("<symbol>" is the lower-case venue symbol), and how each is matched.
STREAMS: dict[MarketKind, tuple[tuple[str, str], ...]] = {
    MarketKind.SPOT: (
        ("<symbol>@depth[@<n>ms]", r"@depth(@(?:0|100|250|500|1000)ms)?"),
        ("<symbol>@trade", r"@trade"),
        ("<symbol>@aggTrade", r"@aggTrade"),
        ("<symbol>@kline_<interval>", rf"@kline_(?:{_INTERVALS})"),
        ("<symbol>@miniTicker", r"@miniTicker"),
        ("<symbol>@ticker", r"@ticker"),
        ("<symbol>@bookTicker", r"@bookTicker"),
        ("!miniTicker@arr", r"!miniTicker@arr"),
        ("!ticker@arr", r"!ticker@arr"),
    ),
    MarketKind.LINEAR: (
        ("<symbol>@depth[@<n>ms]", r"@depth(@(?:0|100|250|500|1000)ms)?"),
        ("<symbol>@trade", r"@trade"),
        ("<symbol>@aggTrade", r"@aggTrade"),
        ("<symbol>@kline_<interval>", rf"@kline_(?:{_INTERVALS})"),
        ("<symbol>@miniTicker", r"@miniTicker"),
        ("<symbol>@ticker", r"@ticker"),
        ("<symbol>@bookTicker", r"@bookTicker"),
        ("<symbol>@markPrice[@1s]", r"@markPrice(@1s)?"),
        ("!miniTicker@arr", r"!miniTicker@arr"),
        ("!ticker@arr", r"!ticker@arr"),
        ("!markPrice@arr[@1s]", r"!markPrice@arr(@1s)?"),
    ),
}
_MATCHERS = {
    kind: [re.compile(("^" if p.startswith("!") else r"^([a-z0-9]+)") + p + "$") for _, p in table]
    for kind, table in STREAMS.items()
}


def stream_served(kind: MarketKind, stream: str, symbols: set[str]) -> bool:
    for matcher in _MATCHERS[kind]:
        match = matcher.match(stream)
        if match is not None:
            return stream.startswith("!") or match.group(1) in symbols
    return False


class StreamHost(Protocol):
    """What the websockets need of the emulator they serve (it passes itself to `Hub`)."""

    api_key: str
    listen_key: str | None
    user_stream_lag: float  # seconds user-data events trail the REST view

    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...

    def notify(self) -> None: ...

    def now_ms(self) -> int: ...

    def markets(self, kind: MarketKind) -> list[Market]: ...

    def secret_matches(self, signature: str, payload: bytes) -> bool: ...


class _Session:
    def __init__(self, ws: web.WebSocketResponse, kind: MarketKind, role: str, *, combined: bool = False) -> None:
        self.ws = ws
        self.kind = kind
        self.role = role  # "market", "user" (listenKey stream) or "api" (spot WebSocket API)
        self.combined = combined  # /stream?streams=...: events wrapped as {"stream", "data"}
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.streams: set[str] = set()  # subscribed stream names
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
            if s.kind is market.kind and s.role == "market":
                for name in s.streams:
                    if name.startswith(prefix):
                        s.send({"stream": name, "data": event} if s.combined else event)

    def subscribed(self, kind: MarketKind) -> set[str]:
        """Every market stream name some connection of this market is subscribed to."""
        out: set[str] = set()
        for s in self.sessions:
            if s.kind is kind and s.role == "market":
                out |= s.streams
        return out

    def publish(self, kind: MarketKind, stream: str, event: Any) -> None:
        for s in self.sessions:
            if s.kind is kind and s.role == "market" and stream in s.streams:
                s.send({"stream": stream, "data": event} if s.combined else event)

    def spot_user(self, event: dict[str, Any]) -> None:
        self._lagged(lambda: self._spot_user_now(event))

    def _spot_user_now(self, event: dict[str, Any]) -> None:
        for s in self.sessions:
            if s.role == "api":
                for sub in sorted(s.subscriptions):
                    s.send({"subscriptionId": sub, "event": event})

    def perp_user(self, event: dict[str, Any], listen_key: str | None = None) -> None:
        key = listen_key if listen_key is not None else self.emulator.listen_key
        if key is None:
            return
        self._lagged(lambda: self._perp_user_now(event, key))

    def _perp_user_now(self, event: dict[str, Any], key: str) -> None:
        for s in self.sessions:
            if s.role == "user" and s.listen_key == key:
                s.send(event)

    def _lagged(self, deliver: Callable[[], None]) -> None:
        """User-data events go out now, or `user_stream_lag` seconds of emulator time later (a scenario's
        "the user stream lags REST"); timers due at the same time run in order, so the order is kept."""
        lag = self.emulator.user_stream_lag
        if lag > 0:
            self.emulator.call_later(lag, deliver)
        else:
            deliver()

    async def flush(self) -> None:
        """Let every connection write what is queued for it now, before the caller goes on (the REST side calls
        this before answering): Binance publishes an execution report when the trade happens, so a client
        never reads a venue's answer about an order before the reports of that order's earlier trades. Each
        pass is one loop iteration (`sleep(0)`): a sender woken by its queue runs first and writes everything
        queued without suspending (small frames compress and write synchronously). Bounded: a connection
        whose transport pushes back keeps its frames buffered, in order, and the answer does not wait."""
        for _ in range(_FLUSH_PASSES):
            if not any(s.queue.qsize() for s in self.sessions):
                return
            await asyncio.sleep(0)

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
            and (role != "market" or s.streams)
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
        kind = MarketKind.LINEAR if request.path.startswith("/fstream") else MarketKind.SPOT
        combined = request.path.rstrip("/").endswith("/stream")
        tail = request.match_info.get("tail", "")
        if kind is MarketKind.LINEAR and tail and tail == self.emulator.listen_key:
            return await self._user(request, tail)  # the legacy /ws/<listenKey> form
        named = request.query.get("streams", "") if combined else tail
        initial = [s for s in named.split("/") if "@" in s]
        session = _Session(web.WebSocketResponse(), kind, "market", combined=combined)
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
            session.streams -= {str(p) for p in params}
            session.send({"result": None, "id": rid})
        elif method == "LIST_SUBSCRIPTIONS":
            session.send({"result": sorted(session.streams), "id": rid})
        else:
            session.send({"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": rid})

    def _subscribe(self, session: _Session, streams: list[str], rid: Any) -> None:
        symbols = {m.venue_symbol.lower() for m in self.emulator.markets(session.kind)}
        for stream in streams:
            if not stream_served(session.kind, stream, symbols):
                # Saying so beats a subscription that never delivers (docs/emulator.md lists what is served).
                session.send(
                    {"error": {"code": 2, "msg": f"Invalid request: stream {stream!r} is not served"}, "id": rid}
                )
                return
        if rid is not None:
            session.send({"result": None, "id": rid})
        session.streams |= set(streams)
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
