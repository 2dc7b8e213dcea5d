"""Property test of the whole engine on the simulated venue: hypothesis draws a script of operator and market
actions (open packages with a fault on either leg, liquidations, price jumps, closes, halts, resumes, waits),
and one `trio.run` under a MockClock plays it.

Why a script and not a `RuleBasedStateMachine`: the engine is a tree of trio tasks that must live across
steps, and hypothesis' stateful runner is synchronous; a rule per `trio.run` would tear the engine down
between rules. Drawing the whole script up front keeps one engine alive for the run and still shrinks to a
minimal failing script. (The pure core has a real rule-based machine: tests/fsm/.)

Invariants, checked while the script runs and after it:
- no package holds naked (unmatched) exposure longer than the leg deadline plus the unwind deadline;
- at the end every package is hedged or flat, none has an unknown order, and the venue's perp positions equal
  the sum of the packages' perp legs (nothing exposed that the engine does not know about);
- the venue-truth oracle: every order, balance and position at the venue is as the journal tells it;
- the journal verifies: hash chain intact, replay of every package reproduces its state and exposure;
- the circuit breaker halted exactly when its rule says, recomputed from the journal's own transitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kept import keep_handles

from legguard.adapters.sim._venue import SimConfig, open_sim_venue
from legguard.engine import BreakerConfig, Deadlines, Engine, EngineConfig, EngineMode, PackageSpec
from legguard.engine._handle import PackageHandle
from legguard.engine._venue_truth import compare_venue
from legguard.engine.journal._replay import verify
from legguard.engine.journal._store import Journal
from legguard.fsm import State

PAIRS = {"ETH": ("ETH/USDT", "ETH/USDT:USDT", Decimal("0.05")), "BTC": ("BTC/USDT", "BTC/USDT:USDT", Decimal("0.01"))}
VENUE_FAULTS = ["reject", "postonly_cross", "partial_fill", "ack_timeout", "stream_drop", "price_jump", "late_landing"]
DEADLINES = Deadlines(ack=1.0, fill=3.0, unwind=5.0, leg=1.0, recv_window=2.0, clock_allowance=0.5)
BREAKER = BreakerConfig(max_orphans=3, window=20.0)

# Besides the venue faults: late landing (an order placed after the client gave up on it), the stream lagging
# REST, and a position check racing the stream (issue 10).
action = st.one_of(
    st.tuples(
        st.just("open"),
        st.sampled_from(sorted(PAIRS)),
        st.sampled_from([None, *VENUE_FAULTS, "actor_crash"]),
        st.booleans(),  # fault on the perp leg (else spot)
    ),
    st.tuples(st.just("wait"), st.floats(min_value=0.01, max_value=4.0)),
    st.tuples(st.just("liquidate"), st.sampled_from(sorted(PAIRS))),
    st.tuples(st.just("lag"), st.sampled_from([0.3, 1.0])),  # the order stream runs behind REST
    st.tuples(st.just("reconcile"), st.sampled_from(sorted(PAIRS))),  # a position check racing the stream
    st.tuples(st.just("jump"), st.sampled_from(sorted(PAIRS)), st.sampled_from([-0.8, 0.8])),
    st.tuples(st.just("close"), st.integers(min_value=0, max_value=30)),
    st.tuples(st.just("halt")),
    st.tuples(st.just("resume")),
)
scripts = st.lists(action, min_size=1, max_size=20)


async def play(script: list[tuple[Any, ...]], db: Path, seed: int) -> None:
    journal = Journal.open(db)
    async with open_sim_venue(SimConfig(seed=seed)) as venue:
        engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES, breaker=BREAKER))
        kept = keep_handles(engine)  # the engine releases flat packages: the checks still see every one
        symbols = [s for spot, perp, _ in PAIRS.values() for s in (spot, perp)]
        async with engine.running(symbols):
            await trio.sleep(1.0)
            for step in script:
                await run_action(engine, venue, step)
                check_naked({**kept, **engine.handles}.values())
            # let everything in flight finish before the graceful shutdown
            await trio.sleep(DEADLINES.fill + DEADLINES.unwind)
            check_naked({**kept, **engine.handles}.values())
        check_final(engine, {**kept, **engine.handles}.values())
        # Memory holds what is live: every flat package was released, and each one is counted.
        assert not [p for p, h in engine.handles.items() if h.core.state is State.FLAT]
        assert engine.packages_total == len(journal.package_ids())
        truth = compare_venue(venue.engine, journal)
        assert truth.ok, truth.problems
    journal.close()
    report = verify(db)
    assert report.ok, report.problems
    check_breaker(Journal.open(db, readonly=True))


async def run_action(engine: Engine, venue: Any, step: tuple[Any, ...]) -> None:
    match step:
        case ("open", base, fault, on_perp):
            spot, perp, qty = PAIRS[base]
            crash = None
            if fault == "actor_crash":
                crash = 2
            elif fault == "price_jump":
                venue.inject("price_jump", symbol=perp, pct=0.6)
            elif fault is not None:
                venue.inject(fault, symbol=perp if on_perp else spot)
            engine.submit(PackageSpec(spot, perp, qty, min_spread=Decimal(-1)), crash_on_event=crash)
            await trio.sleep(0.05)
        case ("wait", seconds):
            await trio.sleep(seconds)
        case ("lag", seconds):
            venue.inject("stream_lag", seconds=seconds, duration=5.0)
        case ("reconcile", base):
            await engine.reconcile_short(PAIRS[base][1])
        case ("liquidate", base):
            _, perp, qty = PAIRS[base]
            short = -venue.engine.positions().get(perp, Decimal(0))
            if short > 0:
                venue.inject("liquidation", symbol=perp, quantity=min(short, qty / 2))
            await trio.sleep(0.05)
        case ("jump", base, pct):
            venue.inject("price_jump", symbol=PAIRS[base][1], pct=pct)
            await trio.sleep(0.2)
        case ("close", index):
            hedged = [h for h in engine.handles.values() if h.core.state is State.HEDGED]
            if hedged:
                engine.request_close(hedged[index % len(hedged)].package_id, "property test")
        case ("halt",):
            engine.halt("property test operator")
        case ("resume",):
            engine.resume("property test operator")
        case _:
            raise AssertionError(f"unknown action {step}")


def check_naked(handles: Iterable[PackageHandle]) -> None:
    now = trio.current_time()
    limit = DEADLINES.leg + DEADLINES.ack + DEADLINES.unwind
    for h in handles:
        assert h.max_naked <= limit, (h.package_id, h.max_naked)
        if h.naked_since is not None:
            assert now - h.naked_since <= limit, (h.package_id, now - h.naked_since)


def check_final(engine: Engine, handles: Iterable[PackageHandle]) -> None:
    expected: dict[str, Decimal] = {}
    for h in handles:
        core = h.core
        assert core.state in (State.HEDGED, State.FLAT), (h.package_id, core.state)
        assert core.is_quiescent(), h.package_id
        exposure = core.exposure()
        assert not exposure.unknown, h.package_id
        if core.state is State.HEDGED:
            assert core.unmatched() == 0, h.package_id
        else:
            assert exposure.perp == 0, (h.package_id, exposure)
            assert abs(exposure.spot) < core.plan.spot.dust, (h.package_id, exposure)
        symbol = core.plan.perp.symbol
        expected[symbol] = expected.get(symbol, Decimal(0)) + exposure.perp
    venue = engine.venue
    positions = venue.engine.positions()  # type: ignore[attr-defined]
    for symbol, qty in expected.items():
        assert positions.get(symbol, Decimal(0)) == qty, (symbol, positions.get(symbol), qty)


def check_breaker(journal: Journal) -> None:
    """Recompute the breaker from the journal: it must halt exactly when the (N+1)th orphan event falls inside
    the window while the engine is running, and at no other time."""
    orphan_times: list[float] = []
    mode = EngineMode.RUNNING
    expected_halts = actual_halts = 0
    for row in journal.rows():
        if row.kind == "transition" and row.payload["dest"] == State.ORPHANED.value:
            t = row.mono_time
            orphan_times = [x for x in orphan_times if x >= t - BREAKER.window] + [t]
            if mode is EngineMode.RUNNING and len(orphan_times) > BREAKER.max_orphans:
                expected_halts += 1
                mode = EngineMode.HALTED
        elif row.kind == "engine" and row.payload["event"] == "halted":
            if row.payload["reason"].startswith("circuit breaker"):
                actual_halts += 1
            mode = EngineMode.HALTED
        elif row.kind == "engine" and row.payload["event"] == "stopping":
            mode = EngineMode.STOPPING
        elif row.kind == "engine" and row.payload["event"] == "resumed":
            mode = EngineMode.RUNNING
            orphan_times = []
    journal.close()
    assert actual_halts == expected_halts


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(script=scripts, seed=st.integers(min_value=0, max_value=1000))
def test_engine_scripts_end_safe(
    tmp_path_factory: pytest.TempPathFactory, script: list[tuple[Any, ...]], seed: int
) -> None:
    db = tmp_path_factory.mktemp("prop") / "journal.db"
    trio.run(play, script, db, seed, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.fuzz
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(script=st.lists(action, min_size=5, max_size=40), seed=st.integers(min_value=0, max_value=10_000))
def test_engine_scripts_end_safe_deep(
    tmp_path_factory: pytest.TempPathFactory, script: list[tuple[Any, ...]], seed: int
) -> None:
    db = tmp_path_factory.mktemp("prop") / "journal.db"
    trio.run(play, script, db, seed, clock=trio.testing.MockClock(autojump_threshold=0))
