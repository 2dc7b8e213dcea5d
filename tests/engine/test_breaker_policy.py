"""The circuit breaker for unattended runs (`breaker.resume_after`), in virtual time: a trip resumes by itself
after the cool-off; a second trip within `breaker.window` of an automatic resume stays halted until an
operator resumes; an operator's halt is never resumed automatically. Every halt and resume reaches the
observers (alerts, metrics)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from legguard.adapters.sim._venue import SimConfig, open_sim_venue
from legguard.engine import Engine, EngineConfig, EngineMode
from legguard.engine._observe import EngineObserver, HaltSource
from legguard.engine._spec import BreakerConfig, SpecError
from legguard.engine.journal._store import Journal

WINDOW, COOL_OFF = 2.0, 5.0  # small: the simulated market ticks in virtual time too


class Recorder(EngineObserver):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool]] = []

    def on_halt(self, reason: str, source: HaltSource) -> None:
        self.seen.append(("halt", source.value, False))

    def on_resume(self, reason: str, automatic: bool) -> None:
        self.seen.append(("resume", reason, automatic))


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    journal = Journal.open(tmp_path / "j.db")
    breaker = BreakerConfig(max_orphans=2, window=WINDOW, resume_after=COOL_OFF)
    async with open_sim_venue(SimConfig(seed=3)) as venue:
        e = Engine(venue, journal, EngineConfig(breaker=breaker))
        e.observers.append(Recorder())
        async with e.running():
            yield e
    journal.close()


def trip(engine: Engine) -> None:
    """Three orphan events at once: more than max_orphans (2) within the window."""
    for _ in range(3):
        engine._breaker(trio.current_time())


def seen(engine: Engine) -> list[tuple[str, str, bool]]:
    observer = engine.observers[0]
    assert isinstance(observer, Recorder)
    return observer.seen


async def test_a_trip_resumes_by_itself_after_the_cool_off(autojump_clock: MockClock, engine: Engine) -> None:
    trip(engine)
    assert engine.mode is EngineMode.HALTED and engine.halt_source is HaltSource.BREAKER
    tripped = trio.current_time()

    await trio.sleep(COOL_OFF - 1)
    assert engine.mode is EngineMode.HALTED
    await trio.sleep(2)

    assert engine.mode is EngineMode.RUNNING
    assert engine.stats.auto_resumes == 1
    assert seen(engine) == [("halt", "breaker", False), ("resume", "circuit breaker cool-off of 5s passed", True)]
    resumed = [r for r in engine.journal.engine_log() if r.payload.get("event") == "resumed"]
    assert resumed[0].payload["automatic"] is True
    assert resumed[0].mono_time - tripped == pytest.approx(COOL_OFF)


async def test_a_second_trip_within_the_window_stays_halted(autojump_clock: MockClock, engine: Engine) -> None:
    trip(engine)
    await trio.sleep(COOL_OFF + 1)
    assert engine.mode is EngineMode.RUNNING

    await trio.sleep(WINDOW / 2)  # within the window of the automatic resume
    trip(engine)
    await trio.sleep(COOL_OFF * 3)

    assert engine.mode is EngineMode.HALTED
    assert engine.resume_at is None
    halted = [r.payload for r in engine.journal.engine_log() if r.payload.get("event") == "halted"]
    assert "tripped again" in str(halted[-1]["auto_resume"])
    engine.resume("operator checked the venue")
    assert engine.mode is EngineMode.RUNNING
    assert [k for k, *_ in seen(engine)] == ["halt", "resume", "halt", "resume"]


async def test_a_trip_long_after_an_automatic_resume_resumes_again(autojump_clock: MockClock, engine: Engine) -> None:
    trip(engine)
    await trio.sleep(COOL_OFF + 1)
    await trio.sleep(WINDOW + 1)  # past the window: a fresh episode

    trip(engine)
    await trio.sleep(COOL_OFF + 1)

    assert engine.mode is EngineMode.RUNNING
    assert engine.stats.auto_resumes == 2


async def test_an_operator_halt_takes_over_and_never_resumes_by_itself(
    autojump_clock: MockClock, engine: Engine
) -> None:
    trip(engine)
    assert engine.halt("operator: investigating", HaltSource.OPERATOR)
    await trio.sleep(COOL_OFF * 3)

    assert engine.mode is EngineMode.HALTED and engine.halt_source is HaltSource.OPERATOR
    assert engine.stats.auto_resumes == 0


async def test_without_resume_after_a_trip_stays_halted(autojump_clock: MockClock, tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        async with open_sim_venue(SimConfig(seed=3)) as venue:
            engine = Engine(venue, journal, EngineConfig(breaker=BreakerConfig(max_orphans=2, window=WINDOW)))
            async with engine.running():
                trip(engine)
                await trio.sleep(COOL_OFF * 3)
                assert engine.mode is EngineMode.HALTED


def test_resume_after_must_be_positive() -> None:
    with pytest.raises(SpecError, match=r"breaker\.resume_after"):
        BreakerConfig(resume_after=0.0)
