"""Group commit: the steps of one scheduler round share one transaction; nothing of a step leaves before that
transaction has committed; a failed commit rolls back every member; a member cancelled while the commit is
pending still releases exactly what it committed; grouped journals replay and verify as before."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from legguard.adapters.sim._venue import SimConfig, open_sim_venue
from legguard.engine import Engine, EngineConfig, PackageSpec
from legguard.engine._group import GroupCommit, GroupCommitFailed
from legguard.engine.journal._replay import replay_package, verify
from legguard.engine.journal._store import Journal
from legguard.fsm import State

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
PAYLOAD = {"client_order_id": "lgab12000001-SE0", "status": "open", "filled": "0", "average": None}


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    j = Journal.open(tmp_path / "j.db")
    commits: list[float] = []
    j.on_commit = commits.append
    j.commits = commits  # type: ignore[attr-defined]
    yield j
    j.close()


def committed_rows(db: Path) -> list[tuple[str, str | None]]:
    """What another connection sees: committed rows only."""
    with sqlite3.connect(db) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT kind, package_id FROM journal ORDER BY seq")]


async def test_the_steps_of_one_round_share_one_transaction(journal: Journal) -> None:
    group = GroupCommit(journal)
    done: list[int] = []

    async def step(i: int) -> None:
        await group.commit([journal.prepare_fact("ack", None, {**PAYLOAD, "n": i}, float(i))])
        done.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(step, i)
    assert sorted(done) == list(range(20))
    assert (group.groups, group.members, group.largest) == (1, 20, 20)
    assert len(journal.commits) == 1  # type: ignore[attr-defined]
    assert journal.head[0] == 20


async def test_a_lone_step_commits_alone(journal: Journal) -> None:
    group = GroupCommit(journal)
    for i in range(3):  # sequential: each step is alone in its round
        await group.commit([journal.prepare_fact("ack", None, PAYLOAD, float(i))])
    assert (group.groups, group.largest) == (3, 1)


async def test_a_failed_commit_rolls_back_every_member(journal: Journal) -> None:
    group = GroupCommit(journal)
    outcomes: dict[int, str] = {}
    head = journal.head

    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async def step(i: int) -> None:
        writes = [journal.prepare_fact("ack", None, PAYLOAD, float(i))]
        if i == 3:
            writes.append(broken)
        try:
            await group.commit(writes)
        except (GroupCommitFailed, sqlite3.OperationalError) as exc:
            outcomes[i] = type(exc).__name__
        else:
            outcomes[i] = "committed"

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(step, i)
    assert "committed" not in outcomes.values() and len(outcomes) == 6, outcomes
    assert list(outcomes.values()).count("OperationalError") == 1  # the leader's own; members get the summary
    assert journal.head == head and committed_rows(journal.path) == []
    # The journal is healthy afterwards: the next group commits.
    await group.commit([journal.prepare_fact("ack", None, PAYLOAD, 9.0)])
    assert committed_rows(journal.path) == [("ack", None)]


async def test_a_step_cancelled_while_its_commit_is_pending_keeps_what_it_committed(journal: Journal) -> None:
    group = GroupCommit(journal)
    released: list[int] = []
    cancelled: list[int] = []

    with trio.CancelScope() as scope:

        def cancel_during_the_commit() -> None:
            scope.cancel()  # Ctrl-C / shutdown arrives while every member waits for the transaction

        async def step(i: int) -> None:
            writes = [journal.prepare_fact("ack", None, PAYLOAD, float(i))]
            if i == 0:
                writes.append(cancel_during_the_commit)
            try:
                await group.commit(writes)
                released.append(i)  # the effects of a committed step are released...
                await trio.lowlevel.checkpoint()  # ...and the cancellation lands at the next checkpoint
            except trio.Cancelled:
                cancelled.append(i)
                raise

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(step, i)
    assert sorted(released) == sorted(cancelled) == list(range(5))
    assert group.groups == 1 and journal.head[0] == 5


async def test_a_member_cancelled_before_the_group_commits_cannot_skip_the_commit(journal: Journal) -> None:
    """The wait is shielded: a member whose scope is cancelled does not return before its rows commit (nor
    raise: its effects must leave). Trio runs a round's tasks in either order, so the member joins as a
    follower in some of the rounds: at least one is required."""
    group = GroupCommit(journal)
    roles: list[str] = []

    async def member() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()  # cancelled before it even reaches the group
            role = "follower" if group._open is not None else "leader"
            await group.commit([journal.prepare_fact("ack", None, PAYLOAD, 2.0)])
            # Back from commit(): its rows are committed, and no Cancelled was raised on the way.
            assert committed_rows(journal.path).count(("ack", None)) == journal.head[0]
            roles.append(role)

    async def leader() -> None:
        await group.commit([journal.prepare_fact("ack", None, PAYLOAD, 1.0)])

    for _ in range(16):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            nursery.start_soon(member)
    assert len(roles) == 16 and "follower" in roles, roles
    assert journal.head[0] == 32 and group.groups == 16


# --- the engine: write-ahead holds across the group -----------------------------------------------------


class WriteAheadVenue:
    """The sim venue, with every effect checked against what the journal has COMMITTED (another connection
    sees nothing else) at the moment it leaves: an order's intent row, a cancel's and a query's rows."""

    def __init__(self, inner: Any, db: Path) -> None:
        self._inner = inner
        self._db = db
        self.checked: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _committed(self, kind: str, cid: str) -> None:
        with sqlite3.connect(self._db) as conn:
            rows = conn.execute("SELECT payload FROM journal WHERE kind = ?", (kind,)).fetchall()
        assert any(json.loads(r[0])["client_order_id"] == cid for r in rows), f"{kind} {cid} left before its commit"
        self.checked.append(f"{kind} {cid}")

    # Arming builds and signs an order, nothing leaves: the kill switch arms its unwind while the cancel is in
    # flight, before the step that decides it. What leaves is checked: `release` and `fire` (the sim venue's send).
    async def fire(self, armed: Any) -> Any:
        self._committed("intent", armed.request.client_order_id)
        return await self._inner.fire(armed)

    def release(self, armed: list[Any]) -> None:
        for a in armed:
            self._committed("intent", a.request.client_order_id)
        if (release := getattr(self._inner, "release", None)) is not None:  # the sim venue sends from `fire`
            release(armed)

    def release_cancel(self, symbol: str, cid: str) -> None:
        self._committed("cancel", cid)
        if (release_cancel := getattr(self._inner, "release_cancel", None)) is not None:
            release_cancel(symbol, cid)

    async def cancel_order(self, symbol: str, cid: str) -> Any:
        self._committed("cancel", cid)
        return await self._inner.cancel_order(symbol, cid)


async def test_no_effect_of_a_group_leaves_before_its_commit(autojump_clock: MockClock, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    journal = Journal.open(db)
    async with open_sim_venue(SimConfig(seed=5)) as sim:
        venue = WriteAheadVenue(sim, db)
        sim.inject("partial_fill", symbol=ETH, fraction=0.5)  # some packages go through the kill switch
        engine = Engine(venue, journal, EngineConfig())  # type: ignore[arg-type]
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            spec = PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=Decimal(-1))
            pids = [engine.submit(spec) for _ in range(12)]
            with trio.fail_after(60):
                for pid in pids:
                    handle = engine.handles.get(pid)  # None: flat and released from memory already
                    if handle is not None:
                        await handle.wait_until(
                            lambda c: c.state is State.FLAT or (c.state is State.HEDGED and c.is_quiescent())
                        )
            assert engine.group.largest > 1  # several packages' steps shared a transaction
            assert engine.group.groups < engine.group.members
            for pid in pids:  # the grouped journal replays to the cores the engine holds
                if pid in engine.handles:  # a released package's core is the journal's replay itself
                    assert replay_package(journal, pid).fingerprint() == engine.handles[pid].core.fingerprint()
    journal.close()
    assert any(c.startswith("intent") for c in venue.checked)
    report = verify(db)
    assert report.ok, report.problems
    # Each package's creation row committed with its dispatch step: first row of the package, then its event.
    with sqlite3.connect(db) as conn:
        for pid in pids:
            kinds = [r[0] for r in conn.execute("SELECT kind FROM journal WHERE package_id = ? ORDER BY seq", (pid,))]
            assert kinds[:2] == ["package_created", "event"], (pid, kinds[:4])


class ArmingVenue(WriteAheadVenue):
    """The write-ahead venue with the capability to write a cancel on the answer it waits for
    (`cancel_on_answer`), recorded: each cancel armed must be journaled (`cancel_armed`, committed) first;
    the sim venue writes nothing ahead, so every armed cancel still leaves from its answer's step."""

    def __init__(self, inner: Any, db: Path) -> None:
        super().__init__(inner, db)
        self.armed: set[tuple[str, str]] = set()
        self.ever_armed: list[tuple[str, bool, str]] = []

    def cancel_on_answer(self, answer_of: str, refused: bool, symbol: str, cid: str) -> None:
        with sqlite3.connect(self._db) as conn:
            rows = conn.execute("SELECT payload FROM journal WHERE kind = 'cancel_armed'").fetchall()
        row = {
            "client_order_id": cid,
            "symbol": symbol,
            "answer_of": answer_of,
            "when": "refused" if refused else "rests",
        }
        assert row in [json.loads(r[0]) for r in rows], f"cancel {cid} armed before its row committed"
        assert (answer_of, cid) not in self.armed, "armed twice"
        self.armed.add((answer_of, cid))
        self.ever_armed.append((answer_of, refused, cid))

    def disarm_cancel(self, answer_of: str, cid: str) -> None:
        self.armed.remove((answer_of, cid))

    def cancel_written(self, cid: str) -> bool:
        return False


async def test_every_cancel_armed_for_an_answer_is_journaled_first_and_disarmed_by_the_end(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    db = tmp_path / "j.db"
    journal = Journal.open(db)
    async with open_sim_venue(SimConfig(seed=11)) as sim:
        venue = ArmingVenue(sim, db)
        engine = Engine(venue, journal, EngineConfig())  # type: ignore[arg-type]
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            spec = PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=Decimal(-1))
            pids = []
            for n in range(16):  # a leg refused while the other's answer travels: its cancel is armed for it
                sim.inject("partial_fill", symbol=ETH if n % 2 else ETH_PERP, fraction=0.5)
                sim.inject("postonly_cross", symbol=ETH_PERP if n % 2 else ETH)
                pids.append(engine.submit(spec))
                await trio.sleep(0.3)
            with trio.fail_after(60):
                for pid in pids:
                    if (handle := engine.handles.get(pid)) is not None:
                        await handle.wait_until(lambda c: c.state is State.FLAT)
    journal.close()
    # (The sim fills nothing at placement, so no leg is naked before the other's answer: the cancels armed for
    # a refusal are `test_engine_on_emulator`'s.)
    assert len(venue.ever_armed) >= 2, venue.ever_armed
    assert venue.armed == set()  # each disarmed by its answer's step: nothing left armed once all are flat
    assert verify(db).ok


async def test_an_urgent_step_commits_at_once_taking_over_the_open_group(journal: Journal, tmp_path: Path) -> None:
    # A routine step and an urgent one in the same round. Trio may run a round's tasks in either order: when
    # the routine one leads first (opens a group and yields), the urgent one takes its group over and commits
    # both at once; otherwise each commits its own. Repeated until the takeover was seen.
    group = GroupCommit(journal)
    takeovers = 0
    for n in range(16):
        seen_by_urgent: list[int] = []
        order: list[str] = []

        async def routine(n: int = n, order: list[str] = order) -> None:
            await group.commit([journal.prepare_fact("ack", None, {**PAYLOAD, "n": 2 * n}, float(n))])
            order.append("routine")

        async def urgent(n: int = n, seen: list[int] = seen_by_urgent, order: list[str] = order) -> None:
            await group.commit([journal.prepare_fact("ack", None, {**PAYLOAD, "n": 2 * n + 1}, float(n))], urgent=True)
            seen.append(len(committed_rows(tmp_path / "j.db")))  # another connection: committed rows only
            order.append("urgent")

        groups, members = group.groups, group.members
        async with trio.open_nursery() as nursery:
            nursery.start_soon(routine)
            nursery.start_soon(urgent)
        assert group.members - members == 2 and journal.head[0] == 2 * n + 2
        if group.groups - groups == 1:  # taken over: one transaction, both rows committed when urgent returned
            takeovers += 1
            assert seen_by_urgent == [2 * n + 2] and order == ["urgent", "routine"]
        else:
            assert group.groups - groups == 2
    assert takeovers > 0


async def test_a_lone_urgent_step_never_yields_before_its_commit(journal: Journal) -> None:
    group = GroupCommit(journal)
    with trio.CancelScope() as scope:
        scope.cancel()  # any checkpoint inside `commit` would raise Cancelled
        await group.commit([journal.prepare_fact("ack", None, PAYLOAD, 1.0)], urgent=True)
    assert not scope.cancelled_caught and journal.head[0] == 1


async def test_a_failed_urgent_takeover_fails_the_whole_group(journal: Journal) -> None:
    group = GroupCommit(journal)

    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    takeovers = 0
    for n in range(16):
        outcomes: dict[str, str] = {}

        async def step(name: str, writes: list[Any], urgent: bool, outcomes: dict[str, str] = outcomes) -> None:
            try:
                await group.commit(writes, urgent=urgent)
                outcomes[name] = "committed"
            except (sqlite3.OperationalError, GroupCommitFailed) as exc:
                outcomes[name] = type(exc).__name__

        head = journal.head
        async with trio.open_nursery() as nursery:
            nursery.start_soon(step, "routine", [journal.prepare_fact("ack", None, PAYLOAD, float(n))], False)
            nursery.start_soon(step, "urgent", [journal.prepare_fact("ack", None, PAYLOAD, float(n)), broken], True)
        assert outcomes["urgent"] == "OperationalError"
        if outcomes["routine"] == "GroupCommitFailed":  # taken over: nothing of either was written
            takeovers += 1
            assert journal.head == head
        else:  # the urgent step committed (failed) alone; the routine one's own group committed
            assert outcomes["routine"] == "committed" and journal.head[0] == head[0] + 1
    assert takeovers > 0


async def test_only_the_kill_switchs_commits_tell_the_journal_they_are_urgent(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = GroupCommit(journal)
    seen: list[bool] = []
    real = journal.commit

    def spy(writes: Any, *, urgent: bool = False) -> None:
        seen.append(urgent)
        real(writes, urgent=urgent)

    monkeypatch.setattr(journal, "commit", spy)
    await group.commit([journal.prepare_fact("ack", None, PAYLOAD, 1.0)])
    await group.commit([journal.prepare_fact("ack", None, PAYLOAD, 2.0)], urgent=True)
    assert seen == [False, True]  # the journal skips its housekeeping (the WAL's restart) on the urgent one
