"""The dead-man's switch: `countdownCancelAll` armed while perp entries may rest, re-armed by a heartbeat well
inside the countdown, disarmed when none rest; and the real wire call against the emulator."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio_asyncio
from trio.testing import MockClock

from legguard.adapters.ccxt._venue import EXCHANGE_IDS, CcxtVenueConfig, open_ccxt_venue
from legguard.adapters.emulator._emulator import DEFAULT_API_KEY, DEFAULT_API_SECRET
from legguard.adapters.emulator._server import serve_emulator
from legguard.adapters.sim._venue import SimConfig, SimVenue, open_sim_venue
from legguard.domain import OrderRequest, OrderStatus, OrderType, OutcomeUnknown, RateLimited, Side, VenueError
from legguard.engine import Deadlines, Engine, EngineConfig, Journal, PackageSpec
from legguard.engine._deadman import CountdownVenue, DeadMan
from legguard.engine._spec import DeadmanConfig, SpecError
from legguard.fsm import Dispatch, ExecutionStyle, LegPlan, LegRole, OrderEvent, PackageCore, PackagePlan, State

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
CONFIG = DeadmanConfig(countdown=10.0, heartbeat=2.5)


@dataclass
class CountdownRecorder:
    """A venue with only a dead-man's switch: records every call at its virtual time."""

    name: str = "recorder"
    calls: list[tuple[float, str, int]] = field(default_factory=list)
    failing: int = 0

    async def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> None:
        await trio.sleep(0.001)  # one round trip
        if self.failing > 0:
            self.failing -= 1
            raise OutcomeUnknown("countdownCancelAll: timed out")
        self.calls.append((trio.current_time(), symbol, countdown_ms))


def core(number: int = 1) -> PackageCore:
    plan = PackagePlan(
        package_id=f"P{number:06d}",
        client_id_prefix=f"lgtest{number:06d}",
        quantity=Decimal("0.05"),
        spot=LegPlan(ETH, Side.BUY, Decimal(2000), Decimal("0.0001"), Decimal("0.0001")),
        perp=LegPlan(ETH_PERP, Side.SELL, Decimal(2010), Decimal("0.001"), Decimal("0.001")),
    )
    return PackageCore(plan)


@dataclass
class Rig:
    venue: CountdownRecorder
    journal: Journal
    engine: Any
    deadman: DeadMan

    def add(self, c: PackageCore) -> None:
        self.engine.handles[c.plan.package_id] = SimpleNamespace(core=c, done=trio.Event())
        self.deadman.poke()

    def events(self) -> list[tuple[str, ...]]:
        return [
            (r.payload["event"], r.payload["symbol"])
            for r in self.journal.engine_log()
            if r.payload["event"].startswith("deadman")
        ]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    journal = Journal.open(tmp_path / "j.db")
    venue = CountdownRecorder()
    engine = SimpleNamespace(handles={}, venue=venue, journal=journal,
                             config=EngineConfig(deadlines=Deadlines(ack=1.0)),
                             outage=SimpleNamespace(suspect=lambda error: None))  # fmt: skip
    yield Rig(venue, journal, engine, DeadMan(engine, CONFIG))  # type: ignore[arg-type]
    journal.close()


def end_entries(c: PackageCore) -> None:
    for cid in list(c.entry.values()):
        c.handle(OrderEvent(cid, OrderStatus.CANCELED))


async def test_armed_while_a_perp_entry_rests_heartbeat_then_disarmed(autojump_clock: MockClock, rig: Rig) -> None:
    assert isinstance(rig.venue, CountdownVenue)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.deadman.run)
        await trio.sleep(5.0)
        assert rig.venue.calls == []  # nothing rests: no timer on the venue
        c = core()
        c.handle(Dispatch())
        t0 = trio.current_time()
        rig.add(c)
        await trio.sleep(7.6)
        end_entries(c)  # both entries cancelled: void
        assert c.state is State.FLAT
        rig.deadman.poke()
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()

    arms = [(round(t - t0, 2), ms) for t, s, ms in rig.venue.calls]
    # Armed at once, re-armed every heartbeat, then disarmed when the next heartbeat would have been due once
    # nothing rests; nothing after.
    assert arms == [(0.0, 10000), (2.5, 10000), (5.0, 10000), (7.5, 10000), (10.0, 0)]
    assert rig.events() == [("deadman_armed", ETH_PERP), ("deadman_disarmed", ETH_PERP)]
    assert rig.deadman.armed == set()


async def test_a_pending_package_arms_before_its_orders_leave(autojump_clock: MockClock, rig: Rig) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.deadman.run)
        rig.add(core())  # pending: about to dispatch
        await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    # Armed, then disarmed by the shutdown itself (a graceful exit leaves no timer behind).
    assert [ms for _, _, ms in rig.venue.calls] == [10000, 0]


async def test_failed_heartbeats_are_retried_and_journaled_once(autojump_clock: MockClock, rig: Rig) -> None:
    rig.venue.failing = 3
    c = core()
    c.handle(Dispatch())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.deadman.run)
        rig.add(c)
        await trio.sleep(4.0)
        nursery.cancel_scope.cancel()
    assert rig.deadman.failures == 3
    first_ok = rig.venue.calls[0][0]
    assert first_ok == pytest.approx(3 * 1.25 + 4 * 0.001, abs=0.01)  # retried every heartbeat / 2
    errors = [r.payload for r in rig.journal.engine_log() if r.payload["event"] == "deadman_error"]
    assert len(errors) == 1 and errors[0]["symbol"] == ETH_PERP


async def test_hedged_packages_keep_no_timer(autojump_clock: MockClock, rig: Rig) -> None:
    c = core()
    c.handle(Dispatch())
    for cid in c.entry.values():
        c.handle(OrderEvent(cid, OrderStatus.CLOSED, Decimal("0.05")))
    assert c.state is State.HEDGED
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.deadman.run)
        rig.add(c)
        await trio.sleep(10.0)
        nursery.cancel_scope.cancel()
    assert rig.venue.calls == []


async def test_disabled_or_without_a_switch_it_does_nothing(autojump_clock: MockClock, rig: Rig) -> None:
    c = core()
    c.handle(Dispatch())
    rig.add(c)
    with trio.fail_after(1):
        await DeadMan(rig.engine, DeadmanConfig(enabled=False)).run()  # returns at once
    recorder, rig.engine.venue = rig.venue, SimpleNamespace(name="no switch")
    with trio.fail_after(1):
        await DeadMan(rig.engine, CONFIG).run()
    assert recorder.calls == []


def test_heartbeat_must_stay_well_inside_the_countdown() -> None:
    with pytest.raises(SpecError, match=r"deadman.heartbeat: 6 is invalid; must be at most half"):
        DeadmanConfig(countdown=10.0, heartbeat=6)
    with pytest.raises(SpecError, match=r"deadman.countdown"):
        DeadmanConfig(countdown=0)


# --- the engine keeps the switch armed from its dispatch -----------------------------------------------


class SimWithSwitch:
    """The simulated venue plus a recorded `countdown_cancel_all`."""

    def __init__(self, venue: SimVenue) -> None:
        self._venue = venue
        self.recorder = CountdownRecorder()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._venue, name)

    async def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> None:
        await self.recorder.countdown_cancel_all(symbol, countdown_ms)


async def test_the_engine_arms_when_it_dispatches_and_disarms_after(autojump_clock: MockClock, tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.db")
    async with open_sim_venue(SimConfig(seed=3)) as sim:
        venue = SimWithSwitch(sim)
        engine = Engine(
            venue,
            journal,
            EngineConfig(deadlines=Deadlines(ack=1.0, fill=4.0, unwind=5.0, recv_window=2.0, clock_allowance=0.5)),
        )  # type: ignore[arg-type]
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            t0 = trio.current_time()
            pid = engine.submit(PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=Decimal(-1)))
            handle = engine.handles[pid]
            with trio.fail_after(30):
                await handle.wait_until(lambda c: c.state in (State.HEDGED, State.FLAT) and c.is_quiescent())
            t_done = trio.current_time()
            await trio.sleep(1.0)
    journal.close()
    calls = venue.recorder.calls
    assert calls[0][1:] == (ETH_PERP, 10000) and calls[0][0] - t0 < 0.01
    assert calls[-1][1:] == (ETH_PERP, 0) and calls[-1][0] - t_done <= DeadmanConfig().heartbeat
    assert all(ms == 10000 for _, _, ms in calls[:-1])


# --- the wire: CcxtVenue.countdown_cancel_all against the emulator ------------------------------------


async def test_countdown_cancel_all_over_ccxt_cancels_resting_perp_orders_when_it_expires() -> None:
    emulator = serve_emulator(tls_port=None, autoclock=False, seed=2)
    async with trio_asyncio.open_loop() as loop, trio_asyncio.aio_as_trio(emulator) as emu:
        config = CcxtVenueConfig(api_key=DEFAULT_API_KEY, secret=DEFAULT_API_SECRET,
                                 urls={e: emu.ccxt_urls(e) for e in EXCHANGE_IDS}, close_grace=0,
                                 stream_ready_timeout=0)  # fmt: skip

        async def advance(seconds: float) -> None:
            async def run() -> None:
                emu.advance(seconds)

            await trio_asyncio.aio_as_trio(run, loop=loop)()

        async with open_ccxt_venue(config) as venue:
            book = await venue.fetch_order_book(ETH_PERP)
            assert book.best_ask is not None
            resting = OrderRequest("lg-dm-1", ETH_PERP, Side.SELL, OrderType.LIMIT, Decimal("0.05"),
                                   book.best_ask + 10, post_only=True)  # fmt: skip
            await venue.fire(venue.arm(resting))
            await venue.countdown_cancel_all(ETH_PERP, 3000)
            armed = emu.state()["countdowns"]
            await advance(2.9)
            before = (await venue.fetch_order(ETH_PERP, "lg-dm-1")).status
            await advance(0.2)
            after = (await venue.fetch_order(ETH_PERP, "lg-dm-1")).status
            await venue.countdown_cancel_all(ETH_PERP, 0)
            disarmed = emu.state()["countdowns"]
            with pytest.raises(VenueError, match="spot has no dead-man"):
                await venue.countdown_cancel_all(ETH, 1000)
    assert armed == ["ETHUSDT"] and disarmed == []
    assert (before, after) == (OrderStatus.OPEN, OrderStatus.CANCELED)


async def test_the_switch_is_rearmed_on_time_while_orders_saturate_the_request_budget(tmp_path: Path) -> None:
    # Real time, real sockets: entries and queries hammer the perp budget as fast as it refills (each refused
    # request waits out its retry_after and tries again), while the dead-man's switch keeps its heartbeat.
    config = DeadmanConfig(countdown=2.0, heartbeat=0.5)
    emulator = serve_emulator(tls_port=None, autoclock=False, seed=2)
    async with trio_asyncio.open_loop(), trio_asyncio.aio_as_trio(emulator) as emu:
        settings = CcxtVenueConfig(api_key=DEFAULT_API_KEY, secret=DEFAULT_API_SECRET,
                                   urls={e: emu.ccxt_urls(e) for e in EXCHANGE_IDS}, close_grace=0,
                                   stream_ready_timeout=0)  # fmt: skip
        async with open_ccxt_venue(settings) as venue:
            book = await venue.fetch_order_book(ETH_PERP)
            assert book.best_ask is not None
            far = book.best_ask + 10

            def resting(cid: str) -> OrderRequest:
                return OrderRequest(cid, ETH_PERP, Side.SELL, OrderType.LIMIT, Decimal("0.05"), far, post_only=True)

            await venue.fire(venue.arm(resting("sat-0")))
            refused: list[str] = []

            async def entries() -> None:
                for n in itertools.count(1):
                    try:
                        await venue.fire(venue.arm(resting(f"sat-{n}")))
                    except RateLimited as exc:
                        refused.append("entry")
                        await trio.sleep(exc.retry_after)

            async def queries() -> None:
                while True:
                    try:
                        await venue.fetch_order(ETH_PERP, "sat-0")
                    except RateLimited as exc:
                        refused.append("query")
                        await trio.sleep(exc.retry_after)

            arms: list[float] = []
            arms_refused: list[VenueError] = []
            real = venue.countdown_cancel_all

            async def countdown_cancel_all(symbol: str, countdown_ms: int) -> None:
                try:
                    await real(symbol, countdown_ms)
                except VenueError as exc:
                    if countdown_ms:
                        arms_refused.append(exc)
                    raise
                if countdown_ms:
                    arms.append(trio.current_time())

            venue.countdown_cancel_all = countdown_cancel_all  # type: ignore[method-assign]
            with Journal.open(tmp_path / "j.db") as journal:
                engine = SimpleNamespace(handles={}, venue=venue, journal=journal,
                                         config=EngineConfig(deadlines=Deadlines(ack=1.0)),
                                         outage=SimpleNamespace(suspect=lambda error: None))  # fmt: skip
                deadman = DeadMan(engine, config)  # type: ignore[arg-type]
                engine.handles["P000001"] = SimpleNamespace(core=core(), done=trio.Event())  # about to dispatch
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(entries)
                    nursery.start_soon(queries)
                    await trio.sleep(0.5)  # saturated before the switch is first needed
                    start = trio.current_time()
                    nursery.start_soon(deadman.run)
                    await trio.sleep(3.0)
                    nursery.cancel_scope.cancel()
            armed = emu.state()["countdowns"]

    assert {"entry", "query"} <= set(refused), "the budget was never saturated"
    assert arms_refused == []  # (the disarm at the end may wait its turn: it is not urgent)
    # Six heartbeats fit in 3 s when every wake is on time; each late wake (a loaded machine) pushes the rest
    # later, so ask for four: a switch rearmed only every countdown would have made two.
    assert len(arms) >= 4, arms
    gaps = [b - a for a, b in zip([start, *arms], arms, strict=False)]
    assert max(gaps) < config.countdown, gaps  # never left to expire
    assert armed == ["ETHUSDT"] or armed == []  # disarmed at the end, unless that last call was cut short


def test_the_run_config_reads_the_deadman_table() -> None:
    from legguard.engine.app._config import ConfigError, parse_config

    base: dict[str, Any] = {"venue": {"kind": "sim"}, "pairs": [{"spot": ETH, "perp": ETH_PERP, "quantity": "0.05"}]}
    assert parse_config(base).engine.deadman == DeadmanConfig()
    tuned = parse_config({**base, "deadman": {"countdown": 4, "heartbeat": 1.5}}).engine.deadman
    assert (tuned.enabled, tuned.countdown, tuned.heartbeat) == (True, 4.0, 1.5)
    with pytest.raises(ConfigError, match=r"deadman.enabled: 'yes' is invalid; expected true or false"):
        parse_config({**base, "deadman": {"enabled": "yes"}})
    with pytest.raises(ConfigError, match=r"deadman.countdwn: unknown key"):
        parse_config({**base, "deadman": {"countdwn": 4}})


async def test_a_perp_leg_that_only_takes_needs_no_switch(rig: Rig) -> None:
    """maker-taker with spot resting, and taker-taker: the perp leg is a capped IOC that never rests, so arming
    (and re-arming) the countdown would only spend the request budget the hedges need."""
    for number, style, maker in ((1, ExecutionStyle.MAKER_TAKER, LegRole.SPOT),
                                 (2, ExecutionStyle.TAKER_TAKER, LegRole.SPOT)):  # fmt: skip
        c = core(number)
        c = PackageCore(replace(c.plan, style=style, maker=maker))
        c.handle(Dispatch())
        rig.add(c)
    assert rig.deadman.wanted() == set()
    resting = PackageCore(replace(core(3).plan, style=ExecutionStyle.MAKER_TAKER, maker=LegRole.PERP))
    resting.handle(Dispatch())
    rig.add(resting)
    assert rig.deadman.wanted() == {ETH_PERP}


async def test_status_says_what_is_armed_and_when_the_venue_would_cancel(autojump_clock: MockClock, rig: Rig) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.deadman.run)
        c = core()
        c.handle(Dispatch())
        rig.add(c)
        await trio.sleep(1.0)  # armed at 0, next heartbeat at 2.5, the venue cancels at 10
        status = rig.deadman.status(trio.current_time())
        nursery.cancel_scope.cancel()

    assert status["armed"] == [ETH_PERP] and status["heartbeats"] == 1
    assert status["next_heartbeat_in_s"] == {ETH_PERP: pytest.approx(1.5)}
    assert status["venue_cancels_in_s"] == {ETH_PERP: pytest.approx(9.0)}


async def test_no_arm_disarm_churn_between_packages(autojump_clock: MockClock, rig: Rig) -> None:
    # One package's entries end, the next one's start a moment later: the switch stays armed on its heartbeat,
    # never disarmed and armed again in between (each call costs request budget).
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.deadman.run)
        first = core(1)
        first.handle(Dispatch())
        t0 = trio.current_time()
        rig.add(first)
        await trio.sleep(1.0)
        end_entries(first)
        rig.deadman.poke()
        await trio.sleep(0.5)
        second = core(2)
        second.handle(Dispatch())
        rig.add(second)
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    assert [(round(t - t0, 2), ms) for t, _, ms in rig.venue.calls] == [(0.0, 10000), (2.5, 10000), (3.0, 0)]
