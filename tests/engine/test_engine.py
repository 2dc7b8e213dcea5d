"""Engine scenarios on the simulated venue, in virtual time: every fault kind on either leg ends hedged or
flat within the unwind deadline, with nothing unmatched, and the venue's own books agree."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from legguard.adapters.sim._venue import SimConfig, SimVenue, open_sim_venue
from legguard.engine import Deadlines, Engine, EngineConfig, EngineMode, PackageSpec
from legguard.engine._spec import BreakerConfig
from legguard.engine.journal._replay import verify
from legguard.engine.journal._store import Journal
from legguard.fsm import State

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
DEADLINES = Deadlines(ack=1.0, fill=4.0, unwind=5.0, leg=3.0)
# Tests price regardless of the simulated basis: the spread rule itself is covered in test_pricing.
ANY_SPREAD = Decimal(-1)


@dataclass
class Rig:
    venue: SimVenue
    journal: Journal
    engine: Engine
    db: Path

    def spec(self, quantity: str = "0.05") -> PackageSpec:
        return PackageSpec(ETH, ETH_PERP, Decimal(quantity), min_spread=ANY_SPREAD)

    async def settle(self, package_id: str, limit: float = 30.0) -> State:
        """Wait (virtual time) until the package is flat, or hedged with nothing in flight."""
        handle = self.engine.handles[package_id]
        with trio.fail_after(limit):
            await handle.wait_until(
                lambda core: core.state is State.FLAT or (core.state is State.HEDGED and core.is_quiescent())
            )
        return handle.core.state

    def assert_safe(self) -> None:
        """Every package hedged or flat; nothing unmatched; the venue's perp positions equal what the
        packages believe they hold."""
        expected: dict[str, Decimal] = {}
        for h in self.engine.handles.values():
            core = h.core
            assert core.state in (State.HEDGED, State.FLAT), (h.package_id, core.state)
            assert core.unmatched() == 0 or core.state is State.FLAT, (h.package_id, core.unmatched())
            exp = core.exposure()
            assert not exp.unknown
            if core.state is State.FLAT:
                assert abs(exp.spot) < core.plan.spot.dust, (h.package_id, exp)
                assert exp.perp == 0, (h.package_id, exp)
            expected[core.plan.perp.symbol] = expected.get(core.plan.perp.symbol, Decimal(0)) + exp.perp
        positions = self.venue.engine.positions()
        for symbol, qty in expected.items():
            assert positions.get(symbol, Decimal(0)) == qty, (symbol, positions, expected)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = tmp_path / "journal.db"
    journal = Journal.open(db)
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES, breaker=BreakerConfig(max_orphans=50)))
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)  # let the books fill
            yield Rig(venue, journal, engine, db)
    journal.close()


def assert_journal_verifies(db: Path) -> None:
    report = verify(db)
    assert report.ok, report.problems


async def test_normal_package_hedges(autojump_clock: MockClock, rig: Rig) -> None:
    pid = rig.engine.submit(rig.spec())
    state = await rig.settle(pid)
    core = rig.engine.handles[pid].core
    if state is State.HEDGED:
        exp = core.exposure()
        assert exp.perp == -core.plan.quantity
        # spot buy fee is charged in ETH: what is held is slightly less than what was bought
        assert 0 < core.plan.quantity - exp.spot <= core.plan.quantity * Decimal("0.001")
    rig.assert_safe()
    assert rig.engine.stats.orphan_events == 0
    assert state is State.HEDGED


@pytest.mark.parametrize("leg", [ETH, ETH_PERP])
@pytest.mark.parametrize(
    ("fault", "params"),
    [
        ("reject", {}),
        ("postonly_cross", {}),
        ("partial_fill", {"fraction": 0.4}),
        ("ack_timeout", {}),
        ("stream_drop", {"seconds": 2.0}),
        ("price_jump", {"pct": 0.6}),
    ],
)
async def test_fault_on_either_leg_ends_hedged_or_flat(
    autojump_clock: MockClock, rig: Rig, leg: str, fault: str, params: dict[str, float]
) -> None:
    rig.venue.inject(fault, symbol=leg, **params)
    pid = rig.engine.submit(rig.spec())
    start = trio.current_time()
    state = await rig.settle(pid)
    handle = rig.engine.handles[pid]
    assert state in (State.HEDGED, State.FLAT)
    if handle.ever_orphaned:
        # the kill switch finished within the unwind deadline (plus the fill window it started from)
        assert trio.current_time() - start <= DEADLINES.fill + DEADLINES.ack + DEADLINES.unwind
    rig.assert_safe()
    assert rig.venue.faults_injected[fault] >= 1
    assert_journal_verifies(rig.db)


async def test_perp_rejected_for_margin_ends_flat_with_nothing_left(autojump_clock: MockClock, rig: Rig) -> None:
    rig.venue.inject("reject", symbol=ETH_PERP)
    pid = rig.engine.submit(rig.spec())
    assert await rig.settle(pid) is State.FLAT
    rig.assert_safe()


async def test_liquidation_of_hedged_perp_breaks_the_leg_and_flattens(autojump_clock: MockClock, rig: Rig) -> None:
    pid = rig.engine.submit(rig.spec())
    assert await rig.settle(pid) is State.HEDGED
    handle = rig.engine.handles[pid]
    rig.venue.inject("liquidation", symbol=ETH_PERP, quantity=Decimal("0.02"))
    with trio.fail_after(30):
        await handle.wait_until(lambda core: core.state is State.FLAT)
    assert handle.ever_orphaned
    assert handle.core.venue_reduced == Decimal("0.02")
    rig.assert_safe()
    assert rig.venue.engine.positions().get(ETH_PERP, Decimal(0)) == 0
    assert_journal_verifies(rig.db)


async def test_actor_crash_is_unwound_and_others_unaffected(autojump_clock: MockClock, rig: Rig) -> None:
    crashing = rig.engine.submit(rig.spec(), crash_on_event=2)
    healthy = rig.engine.submit(rig.spec("0.03"))
    assert await rig.settle(crashing) is State.FLAT
    await rig.settle(healthy)
    assert rig.engine.handles[crashing].faults == 1
    assert rig.engine.handles[healthy].faults == 0
    assert not rig.engine.handles[healthy].ever_orphaned
    faults = [r for r in rig.journal.timeline(crashing) if r.kind == "fault"]
    assert faults
    assert "InjectedCrash" in faults[0].payload["traceback"]
    rig.assert_safe()
    assert_journal_verifies(rig.db)


async def test_breaker_halts_new_packages_and_operator_resumes(autojump_clock: MockClock, tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.db")
    async with open_sim_venue(SimConfig(seed=5)) as venue:
        config = EngineConfig(deadlines=DEADLINES, breaker=BreakerConfig(max_orphans=2, window=60.0))
        engine = Engine(venue, journal, config)
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            spec = PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=ANY_SPREAD)
            # an actor that raises right after dispatch is always routed to the kill switch: three orphan events
            for _ in range(3):
                pid = engine.submit(spec, crash_on_event=1)
                with trio.fail_after(30):
                    await engine.handles[pid].wait_until(lambda core: core.state is State.FLAT)
            assert engine.stats.orphan_events == 3
            assert engine.mode is EngineMode.HALTED
            refused = engine.submit(spec)
            with trio.fail_after(5):
                await engine.handles[refused].wait_until(lambda core: core.state is State.FLAT)
            assert not engine.handles[refused].core.orders  # nothing was sent
            engine.resume("test operator")
            assert engine.mode is EngineMode.RUNNING
    engine_rows = [r.payload["event"] for r in journal.engine_log()]
    assert "halted" in engine_rows
    assert "resumed" in engine_rows
    journal.close()


async def test_cancellation_mid_dispatch_routes_into_the_decision(autojump_clock: MockClock, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    journal = Journal.open(db)
    async with open_sim_venue(SimConfig(seed=9)) as venue:
        engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES))
        with trio.CancelScope() as scope:
            async with engine.running([ETH, ETH_PERP]):
                await trio.sleep(1.0)
                spec = PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=ANY_SPREAD)
                venue.inject("partial_fill", symbol=ETH, fraction=0.4)
                pids = [engine.submit(spec) for _ in range(3)]
                await trio.sleep(0.5)  # in flight / resting
                assert any(engine.handles[p].core.state is State.DISPATCHED for p in pids)
                scope.cancel()  # Ctrl-C equivalent: hard cancellation of the engine's scope
                await trio.sleep(1)
        for p in pids:
            core = engine.handles[p].core
            assert core.state in (State.HEDGED, State.FLAT), (p, core.state)
            assert core.is_quiescent()
    journal.close()
    assert_journal_verifies(db)


async def test_risk_cap_refuses_before_any_order(autojump_clock: MockClock, tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.db")
    async with open_sim_venue(SimConfig(seed=2)) as venue:
        engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES, max_notional=Decimal(50)))
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            pid = engine.submit(PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=ANY_SPREAD))
            with trio.fail_after(5):
                await engine.handles[pid].wait_until(lambda core: core.state is State.FLAT)
            assert not engine.handles[pid].core.orders
    reasons = [r.payload["reason"] for r in journal.timeline(pid) if r.kind == "transition"]
    assert reasons
    assert "max_notional" in reasons[0]
    journal.close()


async def test_leg_deadline_bounds_naked_exposure(autojump_clock: MockClock, tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.db")
    deadlines = Deadlines(ack=1.0, fill=30.0, unwind=5.0, leg=0.5)
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        engine = Engine(venue, journal, EngineConfig(deadlines=deadlines))
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            venue.inject("partial_fill", symbol=ETH_PERP, fraction=0.4)  # the perp stalls at 40 %
            pid = engine.submit(PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=ANY_SPREAD))
            handle = engine.handles[pid]
            with trio.fail_after(60):
                await handle.wait_until(lambda core: core.state is State.FLAT)
    assert handle.ever_orphaned
    # not the 30 s fill deadline: the leg deadline, plus the cancel round trip and the unwind
    assert 0 < handle.max_naked <= deadlines.leg + 0.1
    journal.close()
