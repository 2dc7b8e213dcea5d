"""A new package's dispatch step taken on the submitter's stack (`Engine.submit` -> `PackageActor.step_now`):
both legs released before `submit` returns, never before the creation and dispatch rows are committed; and
the actor path, as before, whenever that cannot be done safely (urgent events pending, a balance check that
must ask the venue, a failing commit)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from legguard.adapters._venue import ArmedOrder
from legguard.adapters.sim._venue import SimConfig, SimVenue, open_sim_venue
from legguard.engine import Deadlines, Engine, EngineConfig, PackageSpec
from legguard.engine._group import GroupCommit
from legguard.engine._spec import RiskConfig
from legguard.engine.journal._store import Journal, JournalError
from legguard.fsm import State

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
QTY = Decimal("0.05")
DEADLINES = Deadlines(ack=1.0, fill=30.0, unwind=30.0, leg=30.0, recv_window=2.0, clock_allowance=0.5)
SPEC = PackageSpec(ETH, ETH_PERP, QTY, min_spread=Decimal(-1))
PAYLOAD = {"note": "x"}


def committed(db: Path, package_id: str | None = None) -> list[str]:
    """The kinds of the rows another connection sees: committed rows only."""
    with sqlite3.connect(db) as conn:
        if package_id is None:
            return [r[0] for r in conn.execute("SELECT kind FROM journal ORDER BY seq")]
        rows = conn.execute("SELECT kind FROM journal WHERE package_id = ? ORDER BY seq", (package_id,))
        return [r[0] for r in rows]


@dataclass
class Rig:
    venue: SimVenue
    journal: Journal
    engine: Engine
    db: Path
    # client id -> the committed row kinds of its package when the venue's `release` took it
    released: dict[str, list[str]] = field(default_factory=dict)

    def legs(self, package_id: str) -> list[str]:
        return [
            cid for cid in self.released if cid.startswith(self.engine.handles[package_id].core.plan.client_id_prefix)
        ]


@asynccontextmanager
async def _rig(tmp_path: Path, config: EngineConfig) -> AsyncIterator[Rig]:
    db = tmp_path / "journal.db"
    journal = Journal.open(db)
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        engine = Engine(venue, journal, config)
        r = Rig(venue, journal, engine, db)
        real_release = venue.release

        def release(armed: Sequence[ArmedOrder]) -> None:
            # The venue looks at the journal as another process would: what is committed, nothing buffered.
            for a in armed:
                pid = engine._orders[a.request.client_order_id].package_id
                r.released[a.request.client_order_id] = committed(db, pid)
            real_release(armed)

        venue.release = release  # type: ignore[method-assign]
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)  # let the books fill
            yield r
    journal.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with _rig(tmp_path, EngineConfig(deadlines=DEADLINES)) as r:
        yield r


def assert_written_ahead(rig: Rig, package_id: str) -> None:
    """Both entry legs were released, each only once its package's creation and dispatch were committed."""
    legs = rig.legs(package_id)
    assert len(legs) == 2, rig.released
    for cid in legs:
        kinds = rig.released[cid]
        assert kinds[:2] == ["package_created", "event"], kinds
        assert "transition" in kinds and "intent" in kinds, kinds


async def settle(rig: Rig, package_id: str) -> None:
    with trio.fail_after(60):
        await rig.engine.handles[package_id].wait_until(lambda core: core.state in (State.HEDGED, State.FLAT))


async def test_submit_releases_both_legs_before_it_returns_and_after_the_commit(
    autojump_clock: MockClock, rig: Rig
) -> None:
    pid = rig.engine.submit(SPEC)
    # No checkpoint since: the dispatch step was decided, committed and released on this stack.
    assert_written_ahead(rig, pid)
    handle = rig.engine.handles[pid]
    assert handle.core.state is State.DISPATCHED and len(handle.events) == 1
    assert sorted(handle.sent_at) == sorted(rig.legs(pid))
    # The actor's task then starts the sends, which await the answers: the package runs on as before.
    await settle(rig, pid)
    assert rig.engine.handles.get(pid) is None or rig.engine.handles[pid].core.state in (State.HEDGED, State.FLAT)


async def test_one_dispatch_per_round_on_the_stack_the_rest_of_a_burst_grouped(
    autojump_clock: MockClock, rig: Rig
) -> None:
    # One transaction per submit would cost a burst's throughput: the first of a scheduler round is taken on
    # the stack, the rest of the round's dispatches share the round's group commit (the actor path).
    groups = rig.engine.group.groups
    pids = [rig.engine.submit(SPEC) for _ in range(5)]
    assert_written_ahead(rig, pids[0])
    assert all(rig.legs(pid) == [] for pid in pids[1:])
    with trio.fail_after(5):
        for pid in pids[1:]:
            await rig.engine.handles[pid].wait_until(lambda core: core.state is not State.PENDING)
    for pid in pids:
        assert_written_ahead(rig, pid)
    # The rest of the burst committed in one transaction (one wall stamp per transaction), the first alone.
    with sqlite3.connect(rig.db) as conn:
        walls = [
            conn.execute(
                "SELECT wall_time FROM journal WHERE package_id = ? AND kind = 'package_created'", (p,)
            ).fetchone()[0]
            for p in pids
        ]
    assert len(set(walls[1:])) == 1 and walls[0] != walls[1], walls
    assert rig.engine.group.groups - groups >= 2
    # A new round (the first package's task has started): the next submit is taken on the stack again.
    nxt = rig.engine.submit(SPEC)
    assert_written_ahead(rig, nxt)
    for pid in [*pids, nxt]:
        await settle(rig, pid)


async def test_with_urgent_events_pending_the_dispatch_waits_on_the_actor_path(
    autojump_clock: MockClock, rig: Rig
) -> None:
    rig.engine.precedence.add()  # a kill-switch event posted and not yet taken
    pid = rig.engine.submit(SPEC)
    assert rig.legs(pid) == [] and rig.engine.handles[pid].core.state is State.PENDING
    with trio.fail_after(1):
        await trio.sleep(0.001)
        assert rig.legs(pid) == []  # still deferring to the kill switch (at most PRECEDENCE_WAIT)
        rig.engine.precedence.done()
        await rig.engine.handles[pid].wait_until(lambda core: core.state is not State.PENDING)
    assert_written_ahead(rig, pid)
    await settle(rig, pid)


def fail_commits(journal: Journal, monkeypatch: pytest.MonkeyPatch, times: int) -> list[str]:
    """The journal's next `times` commits fail as a disk would (their flush of rows, not a read's): the list
    of failures so far."""
    real_flush = journal._flush
    failures: list[str] = []

    def flush_failing() -> None:
        if journal._rows and len(failures) < times:  # a commit flushing its rows (not a read)
            failures.append("disk I/O error")
            raise sqlite3.OperationalError("disk I/O error")
        real_flush()

    monkeypatch.setattr(journal, "_flush", flush_failing)
    return failures


async def test_a_failing_commit_leaves_the_dispatch_to_the_actor_path(
    autojump_clock: MockClock, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = rig.journal
    failures = fail_commits(journal, monkeypatch, times=1)
    head = journal.head
    pid = rig.engine.submit(SPEC)  # does not raise
    assert failures and journal.head == head  # rolled back whole: the creation waits for the next commit
    handle = rig.engine.handles[pid]
    assert rig.legs(pid) == [] and handle.core.state is State.PENDING and handle.events == []
    assert committed(rig.db, pid) == []
    with trio.fail_after(5):
        await handle.wait_until(lambda core: core.state is not State.PENDING)
    assert_written_ahead(rig, pid)  # the actor took the step as always: committed, then released
    await settle(rig, pid)


async def test_a_commit_the_actor_cannot_make_either_meets_the_supervisor_as_before(
    autojump_clock: MockClock, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The journal fails the dispatch on the submitter's stack and again in the actor's own step: the actor
    # raises, the supervisor journals the fault and restarts it with `Fault`, as it always did.
    failures = fail_commits(rig.journal, monkeypatch, times=2)
    pid = rig.engine.submit(SPEC)
    handle = rig.engine.handles[pid]
    with trio.fail_after(30):
        await handle.done.wait()
    assert len(failures) == 2 and rig.released == {}  # nothing ever left
    assert handle.core.state is State.FLAT and handle.faults == 1
    assert "fault" in committed(rig.db, pid)


@pytest.fixture
async def checked_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = EngineConfig(deadlines=DEADLINES, risk=RiskConfig(check_balances=True, margin_guard=False))
    async with _rig(tmp_path, config) as r:
        yield r


async def test_a_balance_check_that_must_ask_the_venue_takes_the_actor_path(
    autojump_clock: MockClock, checked_rig: Rig
) -> None:
    rig = checked_rig
    asked: list[str] = []  # the balance check's own path, which asks the venue when its snapshot is stale
    check = rig.engine.balance_check
    real = check.refusal

    async def refusal(core: Any) -> str | None:
        asked.append(core.plan.package_id)
        return await real(core)

    check.refusal = refusal  # type: ignore[method-assign]
    first = rig.engine.submit(SPEC)  # no snapshot yet: the actor asks the venue, then dispatches
    assert rig.legs(first) == [] and rig.engine.handles[first].core.state is State.PENDING
    with trio.fail_after(5):
        await rig.engine.handles[first].wait_until(lambda core: core.state is not State.PENDING)
    assert asked == [first]
    assert_written_ahead(rig, first)
    second = rig.engine.submit(SPEC)  # a fresh snapshot: answered here, released before submit returns
    assert_written_ahead(rig, second)
    assert asked == [first]
    await trio.sleep(DEADLINES.ack + 10.0)  # past `balance_max_age`: stale again
    third = rig.engine.submit(SPEC)
    assert rig.legs(third) == []
    with trio.fail_after(5):
        await rig.engine.handles[third].wait_until(lambda core: core.state is not State.PENDING)
    assert asked == [first, third]
    assert_written_ahead(rig, third)


async def test_a_refusal_from_a_fresh_snapshot_aborts_on_the_actor_path(
    autojump_clock: MockClock, checked_rig: Rig
) -> None:
    rig = checked_rig
    first = rig.engine.submit(SPEC)
    with trio.fail_after(5):
        await rig.engine.handles[first].wait_until(lambda core: core.state is not State.PENDING)
    # The snapshot is fresh; what earlier entries reserved leaves too little quote for this one.
    rig.engine.balance_check._reserved.append((trio.current_time(), Decimal(10) ** 12, Decimal(0)))
    pid = rig.engine.submit(SPEC)
    handle = rig.engine.handles[pid]
    with trio.fail_after(5):
        await handle.done.wait()
    assert handle.core.state is State.FLAT
    assert not any(cid.startswith(handle.core.plan.client_id_prefix) for cid in rig.released)
    assert "risk: spot USDT free" in str(handle.events[0]), handle.events[0]


# --- the group commit's synchronous entry -------------------------------------------------------------------


async def test_a_dispatch_commit_takes_over_the_open_group(tmp_path: Path) -> None:
    # Routine steps in a round and a dispatch committed synchronously in that round. When a routine leader has
    # opened a group and yielded, the dispatch commits its rows and the group's in one transaction; the
    # members are woken by their leader and release nothing before that commit. Trio may run a round's tasks
    # in any order: repeated until the takeover was seen.
    journal = Journal.open(tmp_path / "j.db")
    try:
        group = GroupCommit(journal)
        takeovers = 0
        for _ in range(24):
            events: list[str] = []
            seen_at_dispatch: list[list[str]] = []

            async def routine(name: str, events: list[str] = events) -> None:
                await group.commit([journal.prepare_fact("ack", None, {**PAYLOAD, "name": name}, 1.0)])
                events.append(f"released {name}")

            async def dispatch(events: list[str] = events, seen: list[list[str]] = seen_at_dispatch) -> None:
                group.commit_now([journal.prepare_fact("engine", None, PAYLOAD, 1.0)])  # no checkpoint
                seen.append(committed(tmp_path / "j.db")[-3:])
                events.append("released dispatch")

            groups, head = group.groups, journal.head[0]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(routine, "a")
                nursery.start_soon(routine, "b")
                nursery.start_soon(dispatch)
            assert journal.head[0] == head + 3 and len(events) == 3
            if group.groups - groups == 1:  # taken over: one transaction for all three
                takeovers += 1
                assert events[0] == "released dispatch"  # the members were woken after it committed
                assert sorted(seen_at_dispatch[0]) == ["ack", "ack", "engine"]
        assert takeovers > 0
    finally:
        journal.close()


async def test_a_dispatch_commit_is_refused_inside_an_open_batch(tmp_path: Path) -> None:
    # Inside the caller's batch the rows would be durable only when that batch commits, after the release:
    # refused (`step_now` then leaves the step to the actor), nothing written.
    journal = Journal.open(tmp_path / "j.db")
    try:
        group = GroupCommit(journal)
        with journal.batch(), pytest.raises(JournalError, match="inside an open batch"):
            group.commit_now([journal.prepare_fact("engine", None, PAYLOAD, 1.0)])
        assert journal.head[0] == 0 and group.groups == 0
        group.commit_now([journal.prepare_fact("engine", None, PAYLOAD, 1.0)])
        assert committed(tmp_path / "j.db") == ["engine"]
    finally:
        journal.close()
