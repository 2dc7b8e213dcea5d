"""The engine's observer hooks, driven by real faults on the simulated venue (virtual time): a lost
acknowledgement reports unknown exposure, the kill switch's reaction and the naked episode; an unreachable
venue reports an outage and its end; an observer that raises is ignored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from legguard.adapters.sim import SimConfig, SimVenue, open_sim_venue
from legguard.engine import Deadlines, Engine, EngineConfig, PackageSpec
from legguard.engine._handle import PackageHandle
from legguard.engine._observe import EngineObserver
from legguard.engine._spec import BreakerConfig
from legguard.engine.journal import Journal
from legguard.fsm import State, Transitioned

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
SPEC = PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=Decimal(-1))


class Recorder(EngineObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_transition(self, handle: PackageHandle, t: Transitioned, now: float) -> None:
        self.events.append(("transition", t.dest.value))

    def on_unknown_exposure(self, package_id: str, detail: str) -> None:
        self.events.append(("unknown", detail))

    def on_kill_switch(self, seconds: float) -> None:
        self.events.append(("kill_switch", seconds))

    def on_naked(self, seconds: float) -> None:
        self.events.append(("naked", seconds))

    def on_venue_health(self, healthy: bool, detail: str) -> None:
        self.events.append(("health", healthy))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


class Broken(EngineObserver):
    def on_transition(self, handle: PackageHandle, t: Transitioned, now: float) -> None:
        raise RuntimeError("observer bug")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[SimVenue, Engine, Recorder]]:
    journal = Journal.open(tmp_path / "j.db")
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        config = EngineConfig(deadlines=Deadlines(ack=1.0, fill=4.0, unwind=5.0, leg=3.0),
                              breaker=BreakerConfig(max_orphans=50))  # fmt: skip
        engine = Engine(venue, journal, config)
        recorder = Recorder()
        engine.observers += [Broken(), recorder]
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            yield venue, engine, recorder
    journal.close()


async def settle(engine: Engine, pid: str) -> None:
    with trio.fail_after(60):
        await engine.handles[pid].wait_until(
            lambda c: c.state is State.FLAT or (c.state is State.HEDGED and c.is_quiescent())
        )


async def test_a_lost_ack_reports_unknown_exposure_and_the_kill_switch(
    autojump_clock: MockClock, rig: tuple[SimVenue, Engine, Recorder]
) -> None:
    venue, engine, recorder = rig
    venue.inject("ack_timeout", symbol=ETH_PERP)
    # The trade flow at the touch can fill the perp before its ack is due, and fills decide: it would hedge.
    # Capped at a fifth, it cannot, so the lost ack is what decides.
    venue.inject("partial_fill", symbol=ETH_PERP, fraction=0.2)

    pid = engine.submit(SPEC)
    await settle(engine, pid)

    kinds = recorder.kinds()
    assert ("transition", "orphaned") in recorder.events  # the broken observer did not stop the others
    assert "unknown" in kinds
    reaction = [s for k, s in recorder.events if k == "kill_switch"]
    assert len(reaction) == 1 and isinstance(reaction[0], float) and reaction[0] > 0


async def test_an_outage_and_its_end_reach_the_observers(
    autojump_clock: MockClock, rig: tuple[SimVenue, Engine, Recorder]
) -> None:
    venue, engine, recorder = rig
    pid = engine.submit(SPEC)
    await settle(engine, pid)
    venue.inject("outage", seconds=5.0)
    await engine.outage.wait_down()
    assert [v for k, v in recorder.events if k == "health"] == [False]
    await engine.outage.wait_up()

    assert [v for k, v in recorder.events if k == "health"] == [False, True]
    assert any("venue unreachable" in text for _, _, text in engine.stats.errors)


async def test_a_post_only_cross_is_routine_not_a_last_error(
    autojump_clock: MockClock, rig: tuple[SimVenue, Engine, Recorder]
) -> None:
    venue, engine, _ = rig
    venue.inject("postonly_cross", symbol=ETH_PERP)
    crossed = engine.submit(SPEC)
    await settle(engine, crossed)
    venue.inject("reject", symbol=ETH_PERP)
    rejected = engine.submit(SPEC)
    await settle(engine, rejected)

    texts = [text for _, _, text in engine.stats.errors]
    assert not any(crossed in t for t in texts)
    assert any(rejected in t for t in texts)
