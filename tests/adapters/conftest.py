"""Shared rig for the tests that run `CcxtVenue` (and the real `Engine` over it) against the in-test
Binance-wire emulator over loopback: the emulator on its own asyncio loop with a manual clock (the market only
moves when a test moves it), the venue on another, both inside the test's trio run.

Test modules import these helpers with `from conftest import ...` (pytest puts this directory on sys.path).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from legguard.adapters.ccxt._venue import EXCHANGE_IDS, CcxtVenue, CcxtVenueConfig, open_ccxt_venue
from legguard.adapters.emulator._emulator import DEFAULT_API_KEY, DEFAULT_API_SECRET, Emulator
from legguard.adapters.emulator._server import serve_emulator
from legguard.domain import MarketKind, OrderRequest, OrderType, OrderUpdate, Side, VenueError
from legguard.engine import Deadlines, Engine, EngineConfig, ExitConfig, Journal
from legguard.engine._venue_truth import compare_venue
from legguard.fsm import State

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
QTY = Decimal("0.05")
STREAM_WAIT = 5.0  # seconds; only reached when a test fails


@dataclass
class FetchLog:
    """Every `fetch_order` the code under test made: the client ids asked for (when asked), and what the
    venue answered (an update or an error) to those that were not cancelled first."""

    asked: list[str] = field(default_factory=list)
    calls: list[tuple[str, str, OrderUpdate | VenueError]] = field(default_factory=list)

    def answers(self, client_order_id: str) -> list[OrderUpdate | VenueError]:
        return [answer for _, cid, answer in self.calls if cid == client_order_id]


@dataclass
class Rig:
    emu: Emulator
    loop: Any  # the emulator's asyncio loop
    venue: CcxtVenue

    async def on_emulator(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a synchronous emulator call on the emulator's own loop (its websockets live there)."""

        async def run() -> Any:
            return fn(*args)

        return await trio_asyncio.aio_as_trio(run, loop=self.loop)()

    async def fault(self, **spec: Any) -> None:
        await self.on_emulator(self.emu.add_fault, spec)

    async def until(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(STREAM_WAIT):
            await trio_asyncio.aio_as_trio(self.emu.wait_until, loop=self.loop)(predicate)

    def orders(self, kind: MarketKind) -> dict[str, dict[str, Any]]:
        """The emulator's own view of every order on one market, by client id."""
        return {o["clientOrderId"]: o for o in self.emu.state()[kind.value]["orders"]}

    async def books(self) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        spot = await self.venue.fetch_order_book(ETH)
        perp = await self.venue.fetch_order_book(ETH_PERP)
        assert spot.best_bid and spot.best_ask and perp.best_bid and perp.best_ask
        return spot.best_bid, spot.best_ask, perp.best_bid, perp.best_ask

    async def place(self, request: OrderRequest) -> OrderUpdate:
        return await self.venue.fire(self.venue.arm(request))

    async def updates_until(self, done: Callable[[dict[str, OrderUpdate]], bool]) -> dict[str, OrderUpdate]:
        """Merged stream updates, latest per client id, until `done` says enough."""
        latest: dict[str, OrderUpdate] = {}
        with trio.fail_after(STREAM_WAIT):
            while not done(latest):
                for u in await self.venue.watch_orders():
                    latest[u.client_order_id] = u
        return latest

    def record_fetches(self) -> FetchLog:
        """Record every `venue.fetch_order` from now on (the engine's reconciliations by client order id)."""
        log = FetchLog()
        real = self.venue.fetch_order

        async def fetch_order(symbol: str, client_order_id: str) -> OrderUpdate:
            log.asked.append(client_order_id)
            try:
                update = await real(symbol, client_order_id)
            except VenueError as exc:
                log.calls.append((symbol, client_order_id, exc))
                raise
            log.calls.append((symbol, client_order_id, update))
            return update

        self.venue.fetch_order = fetch_order  # type: ignore[method-assign]
        return log


@asynccontextmanager
async def emulated(
    *,
    api_key: str = DEFAULT_API_KEY,
    api_secret: str = DEFAULT_API_SECRET,
    tls: bool = False,
    emulator: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Rig]:
    """An emulator (manual clock, seed 11; `emulator` adds `serve_emulator` options) and a `CcxtVenue` on it;
    `overrides` go to `CcxtVenueConfig`."""
    async with trio_asyncio.open_loop() as loop:
        served = serve_emulator(tls_port=0 if tls else None, autoclock=False, seed=11, api_key=api_key,
                                api_secret=api_secret, **(emulator or {}))  # fmt: skip
        async with trio_asyncio.aio_as_trio(served) as emu:
            settings: dict[str, Any] = {
                "api_key": api_key,
                "secret": api_secret,
                "urls": {e: emu.ccxt_urls(e, tls=tls) for e in EXCHANGE_IDS},
                "close_grace": 0,
            }
            if tls:
                # ccxt's own URL check then picks Binance's market-specific error tables.
                settings["ccxt_config"] = {
                    e: {k: v for k, v in emu.ccxt_config(e).items() if k in ("hostname", "cafile")}
                    for e in EXCHANGE_IDS
                }
            settings.update(overrides)
            async with open_ccxt_venue(CcxtVenueConfig(**settings)) as venue:
                yield Rig(emu, loop, venue)


def maker(cid: str, symbol: str, side: Side, price: Decimal, amount: Decimal = QTY) -> OrderRequest:
    return OrderRequest(cid, symbol, side, OrderType.LIMIT, amount, price, post_only=True)


# --- the real engine over ccxt --------------------------------------------------------------------------

# Real time: deadlines long enough never to fire on a loaded machine; a test that needs one to pass jumps
# the clock past it. Books never go stale here (the manual-clock market does not move by itself).
ENGINE_DEADLINES = Deadlines(ack=5.0, fill=30.0, unwind=30.0, leg=30.0)


@asynccontextmanager
async def engine_on(
    rig: Rig, db: Path, deadlines: Deadlines = ENGINE_DEADLINES, exit: ExitConfig | None = None
) -> AsyncIterator[Engine]:
    journal = Journal.open(db)
    try:
        config = EngineConfig(deadlines=deadlines, max_book_age=600.0)
        if exit is not None:
            config = replace(config, exit=exit)
        engine = Engine(rig.venue, journal, config)
        async with engine.running([ETH, ETH_PERP]):
            yield engine
        # The venue-truth oracle: after a clean run, the emulator's own books are what the journal says.
        truth = compare_venue(rig.emu.engine, journal)
        assert truth.ok, truth.problems
    finally:
        journal.close()


async def settle(engine: Engine, pid: str, wait: float = STREAM_WAIT * 2) -> State:
    """Wait (at most `wait` seconds) until the package is flat, or hedged with nothing in flight; its state."""
    handle = engine.handles.get(pid)
    if handle is None:  # flat already, and released from memory
        return engine.core(pid).state
    with trio.fail_after(wait):
        await handle.wait_until(
            lambda core: core.state is State.FLAT or (core.state is State.HEDGED and core.is_quiescent())
        )
    return handle.core.state
