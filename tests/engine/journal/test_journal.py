"""The audit journal (`engine/journal/_store.py`) and its verifier (`engine/journal/_replay.py`): journals are
built by driving real `PackageCore`s and recording every step the way the engine does."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legguard.domain import OrderStatus, OrderType, RejectReason, Side
from legguard.engine.journal import _store as store
from legguard.engine.journal._replay import ReplayMismatch, replay_package, verify
from legguard.engine.journal._store import (
    NUMBER_BLOCK,
    DuplicatePackage,
    Durability,
    InvalidKind,
    Journal,
    JournalError,
    JournalLocked,
    JournalNotFound,
    NotAJournal,
    SecretInPayload,
    UnknownPackage,
    _Checkpointer,
    canonical_json,
    check_no_secrets,
    command_row,
    command_text,
    created_text,
    event_text,
    fact_text,
    row_hash,
)
from legguard.fsm import (
    Abort,
    CancelOrder,
    CloseRequested,
    Command,
    Dispatch,
    Event,
    ExecutionStyle,
    ExitDeadline,
    Fault,
    FillDeadline,
    InvalidTransition,
    JournalIntent,
    LegPlan,
    LegRole,
    OrderEvent,
    OrderIntent,
    OrphanPolicy,
    PackageCore,
    PackagePlan,
    Purpose,
    QueryOrder,
    Recovered,
    Restarted,
    Shutdown,
    State,
    Transitioned,
    Trigger,
    VenueReduction,
    model_plan,
)

# --- building journals the way the engine does ------------------------------------------------------


@dataclass
class Desk:
    """A journal plus the live cores the 'engine' drives; `mono` is the engine's (virtual) clock."""

    journal: Journal
    cores: dict[str, PackageCore] = field(default_factory=dict)
    mono: float = 100.0

    def new_package(self, policy: str = "flatten") -> PackageCore:
        n = self.journal.next_package_number()
        plan = PackagePlan.from_dict(
            {
                "package_id": f"pkg{n}",
                "client_id_prefix": f"lg{self.journal.journal_id}{n:06d}",
                "quantity": "0.5",
                "spot": {"symbol": "ETH/USDT", "side": "buy", "price": "3000", "step": "0.0001", "dust": "0.0001"},
                "perp": {"symbol": "ETH/USDT:USDT", "side": "sell", "price": "3003", "step": "0.001", "dust": "0.001"},
                "policy": policy,
            }
        )
        core = PackageCore(plan)
        self.journal.package_created(plan, {"base": "ETH", "quantity": "0.5", "source": "test"}, self.mono)
        self.cores[plan.package_id] = core
        return core

    def step(self, core: PackageCore, event: Event) -> None:
        self.mono += 0.25
        commands = core.handle(event)
        self.journal.record_step(core.plan.package_id, event, commands, core.state, core.exposure(), self.mono)


def cid(core: PackageCore, leg: str) -> str:
    return f"{core.plan.client_id_prefix}-{leg}"


def build_scenario(journal: Journal) -> Desk:
    """Three packages: A leg-broken (perp rejected post-only) then unwound to flat; B hedged; C void (both
    rejected). Plus an ack, a fault and engine rows, as the engine writes them."""
    desk = Desk(journal)
    journal.record("engine", None, {"event": "started", "reason": "test"}, desk.mono)
    a = desk.new_package()
    desk.step(a, Dispatch())
    journal.record("ack", "pkg1", {"client_order_id": cid(a, "SE0"), "status": "open"}, desk.mono)
    desk.step(a, OrderEvent(cid(a, "SE0"), OrderStatus.CLOSED, D("0.5"), D("3000"), fee_base=D("0.0005")))
    desk.step(a, OrderEvent(cid(a, "PE0"), OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS))
    assert a.state is State.UNWINDING
    desk.step(a, OrderEvent(cid(a, "SU0"), OrderStatus.CLOSED, D("0.4995"), D("2999")))
    assert a.state is State.FLAT

    b = desk.new_package()
    desk.step(b, Dispatch())
    desk.step(b, OrderEvent(cid(b, "SE0"), OrderStatus.CLOSED, D("0.5"), D("3000")))
    desk.step(b, OrderEvent(cid(b, "PE0"), OrderStatus.CLOSED, D("0.5"), D("3003")))
    assert b.state is State.HEDGED

    c = desk.new_package()
    desk.step(c, Dispatch())
    desk.step(c, OrderEvent(cid(c, "SE0"), OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS))
    desk.step(c, OrderEvent(cid(c, "PE0"), OrderStatus.REJECTED, reason=RejectReason.INSUFFICIENT_FUNDS))
    assert c.state is State.FLAT
    journal.record("fault", "pkg3", {"error": "RuntimeError('x')", "traceback": "Traceback...\n  line 1"}, desk.mono)
    journal.record("engine", None, {"event": "stopped", "reason": "test over"}, desk.mono)
    return desk


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
def desk(db: Path) -> Iterator[Desk]:
    journal = Journal.open(db)
    try:
        yield build_scenario(journal)
    finally:
        journal.close()


def raw(db: Path) -> sqlite3.Connection:
    """A tamperer's connection: the append-only triggers are dropped first, as anyone with the file could."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER journal_no_update")
    conn.execute("DROP TRIGGER journal_no_delete")
    return conn


def seq_of(db: Path, kind: str, package_id: str | None, nth: int = 0) -> int:
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT seq FROM journal WHERE kind = ? AND package_id IS ? ORDER BY seq", (kind, package_id)
    ).fetchall()
    conn.close()
    return int(rows[nth][0])


# --- chain intact -------------------------------------------------------------------------------------


def test_untouched_journal_verifies(desk: Desk, db: Path) -> None:
    # Arrange: the scenario journal, closed and reopened from disk
    head = desk.journal.head
    desk.journal.close()

    # Act
    report = verify(db)

    # Assert
    assert report.problems == []
    assert report.ok
    assert report.rows_checked == head[0]
    assert report.packages_checked == 3
    assert (report.head_seq, report.head_hash) == head


def test_packages_table_matches_the_cores(desk: Desk) -> None:
    rows = {r.package_id: r for r in desk.journal.packages()}

    for pid, core in desk.cores.items():
        assert rows[pid].state is core.state
        assert rows[pid].exposure == core.exposure()
    assert rows["pkg1"].exposure.spot == D("0")  # 0.5 bought, 0.0005 fee in base, 0.4995 sold
    assert rows["pkg1"].last_transition == "unwinding->flat (flattened)"
    assert rows["pkg2"].exposure.perp == D("-0.5")


def test_every_row_links_to_the_previous_one(desk: Desk) -> None:
    rows = list(desk.journal.rows())

    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    for before, after in itertools.pairwise(rows):
        assert after.prev_hash == before.hash
    last = rows[-1]
    text = canonical_json(last.payload)
    assert last.hash == row_hash(last.prev_hash, last.seq, last.kind, last.package_id, text, last.wall_time,
                                 last.mono_time)  # fmt: skip


# --- tampering ----------------------------------------------------------------------------------------


def test_edited_payload_is_detected_naming_its_seq(desk: Desk, db: Path) -> None:
    # Arrange: make the unwind order of package 1 look twice as big
    target = seq_of(db, "intent", "pkg1", nth=2)
    desk.journal.close()
    conn = raw(db)
    (payload,) = conn.execute("SELECT payload FROM journal WHERE seq = ?", (target,)).fetchone()
    assert '"amount":"0.4995"' in payload
    conn.execute("UPDATE journal SET payload = ? WHERE seq = ?", (payload.replace("0.4995", "0.999"), target))

    # Act
    report = verify(db)

    # Assert: the chain names the row first; the replay also disowns it
    assert not report.ok
    assert report.problems[0].startswith(f"seq {target}: hash does not match")
    assert any(p.startswith(f"seq {target}: package pkg1") and "replayed core issued" in p for p in report.problems)


def test_edit_with_recomputed_hash_breaks_the_link_to_the_next_row(desk: Desk, db: Path) -> None:
    # Arrange: a careful tamperer rewrites a transition reason AND fixes that row's hash
    target = seq_of(db, "transition", "pkg2", nth=1)
    desk.journal.close()
    conn = raw(db)
    row = conn.execute("SELECT * FROM journal WHERE seq = ?", (target,)).fetchone()
    seq, kind, pid, payload, wall, mono, prev, _ = row
    forged = payload.replace("both legs filled", "all good")
    conn.execute(
        "UPDATE journal SET payload = ?, hash = ? WHERE seq = ?",
        (forged, row_hash(prev, seq, kind, pid, forged, wall, mono), target),
    )

    # Act
    report = verify(db)

    # Assert
    assert not report.ok
    assert report.problems[0].startswith(f"seq {target + 1}: prev_hash does not match the hash of seq {target}")
    assert any(p.startswith(f"seq {target}: package pkg2: journal has transition") for p in report.problems)


def test_deleted_row_is_detected(desk: Desk, db: Path) -> None:
    target = seq_of(db, "ack", "pkg1")
    desk.journal.close()
    raw(db).execute("DELETE FROM journal WHERE seq = ?", (target,))

    report = verify(db)

    assert not report.ok
    assert report.problems[0] == f"seq {target + 1}: follows seq {target - 1}; row(s) {target} are missing (deleted)"


def test_deleted_tail_row_is_detected(desk: Desk, db: Path) -> None:
    last = desk.journal.head[0]
    desk.journal.close()
    raw(db).execute("DELETE FROM journal WHERE seq = ?", (last,))

    report = verify(db)

    assert not report.ok
    assert report.problems[0].startswith(f"journal ends at seq {last - 1} but the head anchor says seq {last}")


def test_deleted_command_row_fails_replay(desk: Desk, db: Path) -> None:
    # Even if the chain were re-forged, a missing decision is caught by replay: here the chain also breaks.
    target = seq_of(db, "transition", "pkg3", nth=1)  # dispatched -> flat (void)
    desk.journal.close()
    raw(db).execute("DELETE FROM journal WHERE seq = ?", (target,))

    report = verify(db)

    assert not report.ok
    assert any("package pkg3" in p and "not in the journal" in p for p in report.problems), report.problems


def test_inserted_row_is_detected(desk: Desk, db: Path) -> None:
    last_seq, last_hash = desk.journal.head
    desk.journal.close()
    conn = raw(db)
    payload = canonical_json({"client_order_id": "x", "status": "open"})
    conn.execute(
        "INSERT INTO journal VALUES (?, 'ack', 'pkg2', ?, 1.0, 1.0, ?, ?)",
        (last_seq + 1, payload, last_hash, row_hash(last_hash, last_seq + 1, "ack", "pkg2", payload, 1.0, 1.0)),
    )

    report = verify(db)

    assert not report.ok
    assert report.problems == [
        f"journal ends at seq {last_seq + 1} but the head anchor says seq {last_seq}: rows were deleted from the "
        f"end or appended behind the journal writer's back"
    ]


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("state", "flat", "packages table says state 'flat' but replaying its 3 event(s) gives 'hedged'"),
        ("perp", "0", "packages table says exposure spot 0.5 perp 0 unknown False but replaying"),
        ("last_transition", "pending->dispatched (dispatch)", "packages table says last transition"),
    ],
)
def test_tampered_packages_table_names_the_package(
    desk: Desk, db: Path, column: str, value: str, expected: str
) -> None:
    desk.journal.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"UPDATE packages SET {column} = ? WHERE package_id = 'pkg2'", (value,))

    report = verify(db)

    assert not report.ok
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"package pkg2: {expected}")


def test_missing_packages_row_is_detected(desk: Desk, db: Path) -> None:
    desk.journal.close()
    sqlite3.connect(db, isolation_level=None).execute("DELETE FROM packages WHERE package_id = 'pkg3'")

    report = verify(db)

    assert report.problems == [f"package pkg3: journaled at seq {seq_of(db, 'package_created', 'pkg3')} but missing "
                               "from the packages table"]  # fmt: skip


def test_packages_row_without_history_is_detected(desk: Desk, db: Path) -> None:
    desk.journal.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO packages SELECT 'pkg9', state, spot, perp, unknown, plan, created_seq, created_wall, "
                 "created_mono, updated_seq, updated_wall, updated_mono, last_transition FROM packages "
                 "WHERE package_id = 'pkg2'")  # fmt: skip

    report = verify(db)

    assert report.problems == ["package pkg9: in the packages table but the journal has no package_created row for it"]


def test_replay_disowns_a_decision_the_core_did_not_make(db: Path) -> None:
    # Arrange: a buggy engine journals a hedge after only the spot leg filled; the chain is perfectly intact
    with Journal.open(db) as journal:
        desk = Desk(journal)
        core = desk.new_package()
        desk.step(core, Dispatch())
        fill = OrderEvent(cid(core, "SE0"), OrderStatus.CLOSED, D("0.5"), D("3000"))
        core.handle(fill)
        bogus = [Transitioned(State.DISPATCHED, Trigger.HEDGE, State.HEDGED, "looks fine")]
        journal.record_step("pkg1", fill, bogus, State.HEDGED, core.exposure(), 1.0)
        bad_seq = journal.head[0]

    # Act
    report = verify(db)

    # Assert
    assert report.problems == [
        f"seq {bad_seq}: package pkg1: journal has transition [dispatched -> hedged (hedge): looks fine] that the "
        "replayed core did not issue"
    ]


def test_replay_reports_a_core_that_refuses_a_journaled_event(db: Path) -> None:
    with Journal.open(db) as journal:
        desk = Desk(journal)
        core = desk.new_package()
        desk.step(core, Dispatch())
        # an event the core cannot accept (dispatch twice), journaled with no commands
        journal.record_step("pkg1", Dispatch(), [], core.state, core.exposure(), 1.0)
        bad_seq = journal.head[0]

    report = verify(db)

    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"seq {bad_seq}: package pkg1: replaying event [dispatch] raised "
                                         "InvalidTransition")  # fmt: skip


# --- durability and transactions ------------------------------------------------------------------


@pytest.mark.parametrize(("durability", "synchronous"), [(Durability.PROCESS, 1), (Durability.POWER, 2)])
def test_durability_sets_the_pragmas(db: Path, durability: Durability, synchronous: int) -> None:
    with Journal.open(db, durability) as journal:
        assert journal.pragma("journal_mode") == "wal"
        assert journal.pragma("synchronous") == synchronous
        assert journal.durability is durability


def test_durability_accepts_config_spelling_and_refuses_nonsense(db: Path) -> None:
    with Journal.open(db, "power") as journal:  # type: ignore[arg-type]  # TOML hands strings
        assert journal.pragma("synchronous") == 2
    with pytest.raises(ValueError, match="'fast' is not a valid Durability"):
        Journal.open(db, "fast")  # type: ignore[arg-type]


def test_default_durability_is_process(db: Path) -> None:
    with Journal.open(db) as journal:
        assert journal.durability is Durability.PROCESS
        assert journal.pragma("synchronous") == 1


def test_batch_rolls_back_on_exception(db: Path) -> None:
    # Arrange
    with Journal.open(db) as journal:
        desk = Desk(journal)
        core = desk.new_package()
        before = journal.head

        def doomed() -> None:
            with journal.batch():
                desk.step(core, Dispatch())
                journal.record("note", "pkg1", {"text": "inside"}, 1.0)
                raise RuntimeError("boom")

        # Act: the block fails after a step and a fact were appended
        with pytest.raises(RuntimeError, match="boom"):
            doomed()

        # Assert: nothing of it is on disk, and the chain continues from where it was
        assert journal.head == before
        assert [r.kind for r in journal.timeline("pkg1")] == ["package_created"]
        assert journal.package("pkg1").state is State.PENDING
        journal.record("note", "pkg1", {"text": "after"}, 2.0)
    assert verify(db).ok


def test_batch_commits_once_at_exit(db: Path) -> None:
    with Journal.open(db) as journal, Journal.open(db, readonly=True) as reader:
        Desk(journal).new_package()
        with journal.batch():
            journal.record("note", "pkg1", {"n": 1}, 1.0)
            journal.record("note", "pkg1", {"n": 2}, 1.0)
            assert len(reader.timeline("pkg1")) == 1  # another connection sees nothing yet
        assert len(reader.timeline("pkg1")) == 3


def test_nested_batch_failure_rolls_back_only_the_inner_rows(db: Path) -> None:
    with Journal.open(db) as journal:
        Desk(journal).new_package()

        def inner() -> None:
            with journal.batch():
                journal.record("note", "pkg1", {"n": "inner"}, 1.0)
                raise KeyError("inner")

        with journal.batch():
            journal.record("note", "pkg1", {"n": "outer"}, 1.0)
            with pytest.raises(KeyError):
                inner()
            journal.record("note", "pkg1", {"n": "outer again"}, 1.0)
        notes = [r.payload["n"] for r in journal.timeline("pkg1") if r.kind == "note"]
    assert notes == ["outer", "outer again"]
    assert verify(db).ok


def test_a_batch_reads_its_own_rows_before_commit(db: Path) -> None:
    with Journal.open(db) as journal:
        Desk(journal).new_package()
        with journal.batch():
            journal.record("note", "pkg1", {"n": 1}, 1.0)
            inside = [r.kind for r in journal.timeline("pkg1")]
            journal.record("note", "pkg1", {"n": 2}, 1.0)
        after = [r.payload.get("n") for r in journal.timeline("pkg1")]
    assert inside == ["package_created", "note"]
    assert after == [None, 1, 2]
    assert verify(db).ok


def test_inner_rollback_after_a_read_flushed_the_inner_rows(db: Path) -> None:
    with Journal.open(db) as journal:
        Desk(journal).new_package()

        def inner() -> None:
            with journal.batch():
                journal.record("note", "pkg1", {"n": "inner"}, 1.0)
                assert len(journal.timeline("pkg1")) == 3  # the read hands the inner row to SQLite
                raise KeyError("inner")

        with journal.batch():
            journal.record("note", "pkg1", {"n": "outer"}, 1.0)
            with pytest.raises(KeyError):
                inner()
        notes = [r.payload["n"] for r in journal.timeline("pkg1") if r.kind == "note"]
    assert notes == ["outer"]
    assert verify(db).ok


def test_swallowed_write_failure_poisons_the_batch(db: Path) -> None:
    # Arrange: the packages update will fail when the step's buffered writes reach SQLite
    with Journal.open(db) as journal:
        desk = Desk(journal)
        core = desk.new_package()
        before = journal.head
        journal._conn.execute(  # a fault only a test can inject: the disk refuses the write
            "CREATE TEMP TRIGGER fail_update BEFORE UPDATE ON packages BEGIN SELECT RAISE(ABORT, 'disk'); END"
        )

        commands = core.handle(Dispatch())

        def step() -> None:
            journal.record_step("pkg1", Dispatch(), commands, core.state, core.exposure(), 2.0)

        def swallowing() -> None:
            with journal.batch(), contextlib.suppress(sqlite3.DatabaseError):
                step()
                journal.package("pkg1")  # a read inside the batch writes the buffers: the update fails here

        # Act: an engine bug swallows the error inside its batch
        with pytest.raises(JournalError, match="rolled back"):
            swallowing()
        # ... or nothing reads: the failure surfaces when the batch commits
        with pytest.raises(sqlite3.DatabaseError, match="disk"), journal.batch():
            step()

        # Assert: the half-written step did not commit
        assert journal.head == before
        assert [r.kind for r in journal.timeline("pkg1")] == ["package_created"]
    assert verify(db).ok


def test_package_counter_and_journal_id_survive_reopen(db: Path) -> None:
    with Journal.open(db) as journal:
        numbers = [journal.next_package_number() for _ in range(3)]
        journal_id = journal.journal_id
    with Journal.open(db, Durability.POWER) as journal:
        # A restart never reuses a number: it starts a fresh block (the old one's rest is skipped).
        assert journal.next_package_number() == NUMBER_BLOCK + 1
        assert journal.journal_id == journal_id
    assert numbers == [1, 2, 3]
    assert len(journal_id) == 4
    assert all(ch in "0123456789abcdefghijklmnopqrstuvwxyz" for ch in journal_id)


def test_a_number_taken_in_a_rolled_back_batch_is_not_given_back(db: Path) -> None:
    with Journal.open(db) as journal:
        assert journal.next_package_number() == 1  # reserves the block (outside any batch)
        taken = []

        def doomed() -> None:
            with journal.batch():
                taken.append(journal.next_package_number())  # from the block: nothing written
                raise RuntimeError

        with pytest.raises(RuntimeError):
            doomed()
        assert taken == [2]
        assert journal.next_package_number() == 3


def test_a_block_is_never_reserved_inside_a_batch(db: Path) -> None:
    # The reservation must be its own fsync'd commit: inside a batch it would commit (or die) with the batch.
    with Journal.open(db) as journal, journal.batch(), pytest.raises(JournalError, match=r"outside journal\.batch"):
        journal.next_package_number()


def test_each_block_reservation_and_each_epoch_is_an_fsynced_commit(db: Path) -> None:
    with Journal.open(db, Durability.PROCESS) as journal:
        assert journal.pragma("synchronous") == 1
        for _ in range(NUMBER_BLOCK + 1):
            journal.next_package_number()
        assert journal.durable_commits == 2  # two blocks: one fsync per NUMBER_BLOCK packages
        assert [journal.next_epoch(), journal.next_epoch()] == [1, 2]
        assert journal.durable_commits == 4
        assert journal.pragma("synchronous") == 1  # back to the journal's own durability
    with Journal.open(db) as journal:
        assert journal.next_epoch() == 3


def test_a_second_writer_is_refused_naming_the_journal_and_the_holder(db: Path) -> None:
    # Issue 10 (defect 6): a `recover` beside a live `run` drove the same packages and both wrote the chain.
    with Journal.open(db) as first:
        Desk(first).new_package()
        with pytest.raises(JournalLocked) as refused:
            Journal.open(db, Durability.POWER)
        message = str(refused.value)
        assert str(db) in message and f"pid {os.getpid()}" in message and "\n" not in message
        with Journal.open(db, readonly=True) as reader:  # readers need no lock
            assert reader.package_ids() == ["pkg1"]
        first.record("note", "pkg1", {"still": "writing"}, 1.0)
    with Journal.open(db) as second:  # closing released it
        second.record("note", "pkg1", {"from": "second"}, 1.0)
    assert verify(db).ok


def test_a_writer_behind_the_lock_cannot_fork_the_chain(db: Path) -> None:
    # The chain's head is not re-read in every transaction: another writer's commit (one that got around
    # the lock) is caught by the seq it took or by meta head no longer being what this writer committed.
    first = Journal.open(db)
    assert first._lock is not None
    first._lock.release()  # as if the lock file had been deleted: a second writer gets in
    with first, Journal.open(db) as second:
        first.record("note", None, {"n": 1}, 1.0)
        with pytest.raises(JournalError, match="another writer appended") as rows_taken:
            second.record("note", None, {"n": 2}, 2.0)  # chained on seq 0's head: seq 1 is taken
        assert second.journal_id in str(rows_taken.value)
        second.record("note", None, {"n": 3}, 3.0)  # re-read the head: chains on seq 1
        assert second.head[0] == 2
        # meta head moved by another writer, with no row of this writer's seq taken:
        second._conn.execute("UPDATE meta SET value = 'x' WHERE key = 'head'")
        with pytest.raises(JournalError, match="another writer committed"):
            second.record("note", None, {"n": 4}, 4.0)
        second._conn.execute("UPDATE meta SET value = ? WHERE key = 'head'", (f"{second.head[0]}:{second.head[1]}",))
        with pytest.raises(JournalError, match="another writer appended"):  # `first` chained on seq 1 still
            first.record("note", None, {"n": 5}, 5.0)
        first.record("note", None, {"n": 6}, 6.0)
        assert first.head == first._read_head() and first.head[0] == 3
    report = verify(db)
    assert report.ok, report.problems
    with Journal.open(db, readonly=True) as reader:
        assert [r.payload["n"] for r in reader.rows()] == [1, 3, 6]


def test_the_lock_dies_with_its_process(db: Path) -> None:
    code = (
        "import os, sys; from legguard.engine import Journal; "
        f"j = Journal.open({str(db)!r}); print('locked', flush=True); os._exit(0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "locked", done.stderr
    with Journal.open(db) as journal:  # the writer died without closing: the kernel dropped its lock
        journal.record("note", None, {"after": "the crash"}, 1.0)


def test_writer_leaves_checkpoints_to_the_background_thread(db: Path) -> None:
    with Journal.open(db) as journal:
        assert journal.pragma("wal_autocheckpoint") == 0
    with Journal.open(db, background_checkpoint=False) as journal:
        assert journal.pragma("wal_autocheckpoint") == 1000  # SQLite's inline default


def test_checkpointer_copies_committed_frames_into_the_database(db: Path) -> None:
    with Journal.open(db, background_checkpoint=False) as journal:
        journal._conn.execute("PRAGMA wal_autocheckpoint=0")
        Desk(journal).new_package()
        for n in range(20):
            journal.record("note", "pkg1", {"n": n}, 1.0)
        checkpointer = _Checkpointer(db, synchronous=1, start=False)
        try:
            result = checkpointer.run_once()
        finally:
            checkpointer.close()
    assert result is not None
    busy, frames, done = result
    assert busy == 0
    assert frames > 0
    assert done == frames
    assert checkpointer.checkpoints == 1


@contextlib.contextmanager
def _journal_checkpointed_by_hand(db: Path) -> Iterator[tuple[Journal, _Checkpointer]]:
    """A journal with package `pkg1`, whose background checkpoints the test runs itself (`run_once`)."""
    with Journal.open(db, background_checkpoint=False) as journal:
        journal._conn.execute("PRAGMA wal_autocheckpoint=0")
        checkpointer = _Checkpointer(db, synchronous=1, start=False)
        journal._checkpointer = checkpointer
        try:
            Desk(journal).new_package()
            yield journal, checkpointer
        finally:
            journal._checkpointer = None
            checkpointer.close()


def test_a_writer_that_never_pauses_still_lets_the_wal_start_over(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Back-to-back commits: every background checkpoint runs while the writer's next transaction is open, so
    # it never completes and, without the writer's own checkpoint, the WAL would grow with every commit.
    monkeypatch.setattr(store, "WAL_RESTART_FRAMES", 40)
    wal = Path(f"{db}-wal")
    with _journal_checkpointed_by_hand(db) as (journal, checkpointer):
        sizes = []
        for n in range(400):
            with journal.batch():
                journal.record("note", "pkg1", {"n": n, "pad": "x" * 900}, 1.0)
                checkpointer.run_once()  # the background's, racing the open transaction
            sizes.append(wal.stat().st_size)
    page = 4096
    assert max(sizes) < 3 * store.WAL_RESTART_FRAMES * page  # bounded, not ~400 commits of frames
    assert sizes[-1] <= sizes[len(sizes) // 2]  # reused from its start, not grown
    assert checkpointer.writer_checkpoints >= 5


def test_a_kill_switch_commit_leaves_the_wals_restart_to_the_next_routine_one(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer's own checkpoint stalls it for milliseconds (an fsync): never between the kill switch's
    # decision and its order, which waits for the urgent commit.
    monkeypatch.setattr(store, "WAL_RESTART_FRAMES", 1)
    with _journal_checkpointed_by_hand(db) as (journal, checkpointer):
        with journal.batch():
            journal.record("note", "pkg1", {"n": 0}, 1.0)
            checkpointer.run_once()  # reports a WAL over the (lowered) limit
        assert checkpointer.writer_checkpoints == 1  # a routine commit pays it
        checkpointer.wal_frames = 5
        journal.commit([journal.prepare_fact("note", "pkg1", {"n": 1}, 1.0)], urgent=True)
        assert checkpointer.writer_checkpoints == 1  # not on the kill switch's path
        journal.commit([journal.prepare_fact("note", "pkg1", {"n": 2}, 1.0)])
        assert checkpointer.writer_checkpoints == 2  # the next routine commit owes it, and pays it


def test_writer_checkpoints_inline_again_if_the_thread_died(db: Path) -> None:
    with Journal.open(db) as journal:
        checkpointer = journal._checkpointer
        assert checkpointer is not None
        checkpointer.close()  # as if the thread had died
        checkpointer.pending = 10 * checkpointer.every

        journal.record("engine", None, {"event": "started"}, 1.0)

        assert journal._checkpointer is None
        assert journal.pragma("wal_autocheckpoint") == 1000


# --- guards ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"api_key": "AKIA-not-for-the-journal"},
        {"venue": {"apiSecret": "AKIA-not-for-the-journal"}},
        {"accounts": [{"name": "a", "Password": "AKIA-not-for-the-journal"}]},
        {"private-key": "AKIA-not-for-the-journal"},
    ],
)
def test_secret_keys_are_refused_without_echoing_the_value(db: Path, payload: dict[str, object]) -> None:
    with Journal.open(db) as journal:
        Desk(journal).new_package()
        before = journal.head

        with pytest.raises(SecretInPayload, match="looks like a credential") as info:
            journal.record("note", "pkg1", payload, 1.0)

        assert "AKIA" not in str(info.value)
        assert journal.head == before


def test_secret_in_a_package_spec_is_refused(db: Path) -> None:
    with Journal.open(db) as journal:
        desk = Desk(journal)
        core = desk.new_package()
        plan = PackagePlan.from_dict({**core.plan.to_dict(), "package_id": "other"})

        with pytest.raises(SecretInPayload, match=r"payload\.spec\.api_secret"):
            journal.package_created(plan, {"base": "ETH", "api_secret": "hunter2"}, 1.0)

        assert journal.package_ids() == ["pkg1"]


def test_record_refuses_replayed_and_malformed_kinds(db: Path) -> None:
    with Journal.open(db) as journal:
        Desk(journal).new_package()
        with pytest.raises(InvalidKind, match="record_step"):
            journal.record("transition", "pkg1", {"source": "pending"}, 1.0)
        with pytest.raises(InvalidKind, match="lowercase identifier"):
            journal.record("Weird Kind", None, {}, 1.0)


def test_unknown_and_duplicate_packages_are_refused(db: Path) -> None:
    with Journal.open(db) as journal:
        desk = Desk(journal)
        core = desk.new_package()
        with pytest.raises(UnknownPackage, match="'ghost'"):
            journal.record("ack", "ghost", {}, 1.0)
        with pytest.raises(UnknownPackage, match="'ghost'"):
            journal.record_step("ghost", Dispatch(), [], State.PENDING, core.exposure(), 1.0)
        with pytest.raises(DuplicatePackage, match="'pkg1'"):
            journal.package_created(core.plan, {}, 1.0)
        assert journal.head[0] == 1


def test_nan_time_is_refused(db: Path) -> None:
    with Journal.open(db) as journal, pytest.raises(ValueError, match="not a finite number"):
        journal.record("engine", None, {"event": "started"}, float("nan"))


def test_readonly_journal_refuses_writes(desk: Desk, db: Path) -> None:
    with Journal.open(db, readonly=True) as reader, pytest.raises(JournalError, match="read-only"):
        reader.record("engine", None, {"event": "x"}, 1.0)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(JournalNotFound, match="no journal at"):
        Journal.open(tmp_path / "absent.db", readonly=True)
    with pytest.raises(JournalNotFound):
        verify(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()  # reading never creates the file

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    with pytest.raises(NotAJournal, match="not a legguard journal"):
        Journal.open(other)
    text = tmp_path / "notes.txt"
    text.write_text("hello, definitely not sqlite " * 100)
    with pytest.raises(NotAJournal):
        verify(text)


# --- readers --------------------------------------------------------------------------------------


def test_readers(desk: Desk) -> None:
    journal = desk.journal

    assert journal.package_ids() == ["pkg1", "pkg2", "pkg3"]
    assert [r.package_id for r in journal.packages(State.FLAT)] == ["pkg1", "pkg3"]
    assert [r.package_id for r in journal.open_packages()] == ["pkg2"]  # hedged holds exposure
    assert [i.client_order_id for i in journal.intents("pkg1")] == [cid(desk.cores["pkg1"], x)
                                                                     for x in ("SE0", "PE0", "SU0")]  # fmt: skip
    assert [e.kind for e in journal.events("pkg2")] == ["dispatch", "order", "order"]
    kinds = [r.kind for r in journal.timeline("pkg3")]
    assert kinds[:5] == ["package_created", "event", "intent", "intent", "transition"]
    assert kinds[-1] == "fault"
    assert [r.payload["event"] for r in journal.engine_log()] == ["started", "stopped"]
    assert journal.timeline("pkg1")[0].payload["spec"]["source"] == "test"


def test_replay_package_rebuilds_the_core(desk: Desk) -> None:
    for pid, live in desk.cores.items():
        rebuilt = replay_package(desk.journal, pid)
        assert rebuilt.state is live.state
        assert rebuilt.exposure() == live.exposure()
        assert rebuilt.orders == live.orders


def test_replay_package_refuses_a_journal_that_disagrees(db: Path) -> None:
    with Journal.open(db) as journal:
        core = Desk(journal).new_package()
        journal.record_step("pkg1", Dispatch(), [], State.DISPATCHED, core.exposure(), 1.0)  # commands dropped
        with pytest.raises(ReplayMismatch, match="not in the journal"):
            replay_package(journal, "pkg1")


# --- properties -----------------------------------------------------------------------------------


@given(
    seq=st.integers(1, 2**53),
    kind=st.text(max_size=12),
    package_id=st.none() | st.text(max_size=12),
    payload=st.text(max_size=40),
    wall=st.floats(allow_nan=False, allow_infinity=False),
    mono=st.floats(allow_nan=False, allow_infinity=False),
)
def test_row_hash_is_the_canonical_json_spelling(
    seq: int, kind: str, package_id: str | None, payload: str, wall: float, mono: float
) -> None:
    body = canonical_json([seq, kind, package_id, payload, wall, mono])
    expected = hashlib.sha256(("p" * 64 + body).encode()).hexdigest()
    assert row_hash("p" * 64, seq, kind, package_id, payload, wall, mono) == expected


_STATUSES = [OrderStatus.OPEN, OrderStatus.CLOSED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED,
             OrderStatus.UNKNOWN]  # fmt: skip


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[int, str, object]]:
    """Per step: (package index, action, detail) — resolved against the live core when played."""
    return draw(
        st.lists(
            st.tuples(
                st.integers(0, 2),
                st.sampled_from(["order", "order", "order", "deadline", "fault", "abort"]),
                st.tuples(st.integers(0, 9), st.sampled_from(_STATUSES), st.integers(0, 4)),
            ),
            max_size=25,
        )
    )


def play(journal: Journal, script: list[tuple[int, str, object]]) -> Desk:
    desk = Desk(journal)
    cores = [desk.new_package(policy) for policy in ("flatten", "trim", "flatten")]
    for core in cores[:2]:
        desk.step(core, Dispatch())
    dead: set[int] = set()
    for index, action, detail in script:
        core = cores[index]
        if index in dead:
            continue
        assert isinstance(detail, tuple)
        pick, status, fifths = detail
        event: Event
        if action == "order" and core.orders:
            facts = list(core.orders.values())[pick % len(core.orders)]
            filled = facts.intent.amount * fifths / 4 if status is not OrderStatus.REJECTED else D(0)
            filled = max(filled, facts.filled) if status is OrderStatus.CLOSED else filled
            event = OrderEvent(facts.intent.client_order_id, status, filled.quantize(D("0.0001")))
        elif action == "deadline":
            event = FillDeadline()
        elif action == "fault":
            event = Fault(detail="injected")
        elif action == "abort" and core.state is State.PENDING:
            event = Abort(reason="refused")
        else:
            continue
        try:
            commands = core.handle(event)
        except Exception:
            # The engine would not journal a step the core refused; its state is now suspect: stop feeding it.
            dead.add(index)
            continue
        desk.mono += 0.1
        journal.record_step(core.plan.package_id, event, commands, core.state, core.exposure(), desk.mono)
        journal.record("ack", core.plan.package_id, {"status": status.value}, desk.mono)
    return desk


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=scripts(), victim=st.integers(0, 10_000))
def test_any_journal_the_engine_writes_verifies_and_any_edit_is_named(
    tmp_path_factory: pytest.TempPathFactory, script: list[tuple[int, str, object]], victim: int
) -> None:
    # Arrange: a journal from a random interleaving of venue answers across three packages
    db = tmp_path_factory.mktemp("prop") / "j.db"
    with Journal.open(db) as journal:
        play(journal, script)
        rows = journal.head[0]

    # Act / Assert: intact -> ok
    assert verify(db).problems == []

    # Act / Assert: flip one byte of one row's payload -> the first problem names that row
    target = victim % rows + 1
    conn = raw(db)
    (payload,) = conn.execute("SELECT payload FROM journal WHERE seq = ?", (target,)).fetchone()
    tampered = json.dumps({**json.loads(payload), "tampered": True}, sort_keys=True, separators=(",", ":"))
    conn.execute("UPDATE journal SET payload = ? WHERE seq = ?", (tampered, target))
    conn.close()
    report = verify(db)
    assert not report.ok
    assert report.problems[0].startswith(f"seq {target}: hash does not match")


# --- prepared writes and deferred creation (the engine's group commit) -----------------------------------


def _plan(journal: Journal, n: int) -> PackagePlan:
    return PackagePlan.from_dict(
        {
            "package_id": f"pkg{n}",
            "client_id_prefix": f"lg{journal.journal_id}{n:06d}",
            "quantity": "0.5",
            "spot": {"symbol": "ETH/USDT", "side": "buy", "price": "3000", "step": "0.0001", "dust": "0.0001"},
            "perp": {"symbol": "ETH/USDT:USDT", "side": "sell", "price": "3003", "step": "0.001", "dust": "0.001"},
            "policy": "flatten",
        }
    )


def _engine_plan(journal: Journal, package_id: str) -> PackagePlan:
    return dataclasses.replace(_plan(journal, 1), package_id=package_id)


def test_a_new_package_id_from_the_block_is_looked_up_once_per_block(db: Path) -> None:
    # An id spelled from a number of the block may already be in the journal (created there under that id
    # without taking the number): it is still refused, from the one look-up made when the block was reserved.
    with Journal.open(db) as journal:
        journal.package_created(_engine_plan(journal, "P000002"), {}, 1.0)
    with Journal.open(db) as journal:
        lookups: list[str] = []
        journal._conn.set_trace_callback(lambda sql: lookups.append(sql) if "FROM packages" in sql else None)
        first, second, third = (f"P{journal.next_package_number():06d}" for _ in range(3))
        assert (first, second, third) == ("P000001", "P000002", "P000003")
        journal.defer_created(_engine_plan(journal, first), {}, 1.0)
        with pytest.raises(DuplicatePackage, match="'P000002'"):
            journal.defer_created(_engine_plan(journal, second), {}, 1.0)
        journal.defer_created(_engine_plan(journal, third), {}, 1.0)
        assert len(lookups) == 1 and "BETWEEN" in lookups[0]  # the block's, none per package
        with pytest.raises(DuplicatePackage, match="'P000002'"):
            journal.package_created(_engine_plan(journal, "P000002"), {}, 1.0)
        assert len(lookups) == 1
        # An id not handed out of the block (the engine never makes one, a caller may) is looked up alone.
        journal.package_created(_engine_plan(journal, "P000900"), {}, 1.0)
        journal.package_created(_engine_plan(journal, "custom-1"), {}, 1.0)
        assert len(lookups) == 3


def test_a_block_across_a_power_of_ten_looks_each_new_package_up(db: Path) -> None:
    # P999999 and P1000000 are not one range of strings: each package of such a block is looked up alone.
    with Journal.open(db) as journal:
        journal.package_created(_engine_plan(journal, "P1000000"), {}, 1.0)
        journal._conn.execute("UPDATE meta SET value = '999998' WHERE key = 'package_counter'")
        journal._conn.execute("INSERT OR IGNORE INTO meta VALUES ('package_counter', '999998')")
    with Journal.open(db) as journal:
        ids = [f"P{journal.next_package_number():06d}" for _ in range(2)]
        assert ids == ["P999999", "P1000000"] and journal._block_taken is None
        journal.defer_created(_engine_plan(journal, ids[0]), {}, 1.0)
        with pytest.raises(DuplicatePackage, match="'P1000000'"):
            journal.defer_created(_engine_plan(journal, ids[1]), {}, 1.0)


def test_a_deferred_creation_commits_with_the_packages_first_step(db: Path) -> None:
    with Journal.open(db) as journal:
        commits: list[float] = []
        journal.on_commit = commits.append
        plan = _plan(journal, 1)
        journal.defer_created(plan, {"source": "test"}, 1.0)
        with pytest.raises(DuplicatePackage, match="pkg1"):
            journal.defer_created(plan, {"source": "test"}, 1.0)
        assert journal.package_ids() == []  # nothing written yet
        core = PackageCore(plan)
        commands = core.handle(Dispatch())
        journal.commit([journal.prepare_step("pkg1", Dispatch(), commands, core.state, core.exposure(), 2.0)])
        assert len(commits) == 1  # creation and dispatch: one transaction
        kinds = [r.kind for r in journal.timeline("pkg1")]
        assert kinds[:2] == ["package_created", "event"] and {"intent", "transition"} <= set(kinds)
        assert journal.package("pkg1").state is State.DISPATCHED
    assert verify(db).ok


def test_a_rolled_back_first_step_puts_the_creation_back_in_waiting(db: Path) -> None:
    with Journal.open(db) as journal:
        plan = _plan(journal, 1)
        journal.defer_created(plan, {"source": "test"}, 1.0)
        core = PackageCore(plan)
        commands = core.handle(Dispatch())
        step = journal.prepare_step("pkg1", Dispatch(), commands, core.state, core.exposure(), 2.0)

        def disk_full() -> None:
            raise sqlite3.OperationalError("database or disk is full")

        with pytest.raises(sqlite3.OperationalError):
            journal.commit([step, disk_full])
        assert journal.package_ids() == [] and journal.head[0] == 0
        journal.commit([step])  # the retry writes the creation again, first
        assert [r.kind for r in journal.timeline("pkg1")][:2] == ["package_created", "event"]
        # A package never stepped is never written (nothing of it can have been sent).
        journal.defer_created(_plan(journal, 2), {"source": "test"}, 3.0)
    with Journal.open(db, readonly=True) as journal:
        assert journal.package_ids() == ["pkg1"]
    assert verify(db).ok


def test_a_fact_about_a_deferred_package_writes_its_creation_first(db: Path) -> None:
    with Journal.open(db) as journal:
        journal.defer_created(_plan(journal, 1), {"source": "test"}, 1.0)
        journal.record("control", "pkg1", {"action": "close", "via": "test", "reason": "r", "result": "ok"}, 2.0)
        assert [r.kind for r in journal.timeline("pkg1")] == ["package_created", "control"]
    assert verify(db).ok


# --- the step rows' direct spelling is canonical_json's, byte for byte (issue 16) ---------------------------


def _step_corpus() -> list[tuple[Event, list[Command]]]:
    """(event, commands) of scripted cores in every style and policy: entries, partial fills, rejections,
    venue reductions, deadlines, exits, unwinds, faults. Deterministic: its journal rows are pinned below."""
    out: list[tuple[Event, list[Command]]] = []
    for style in ExecutionStyle:
        for policy in OrphanPolicy:
            core = PackageCore(dataclasses.replace(model_plan(), style=style, policy=policy))

            def feed(event: Event, core: PackageCore = core) -> None:
                out.append((event, core.handle(event)))

            feed(Dispatch())
            step = 0
            while core.orders and step < 40:
                step += 1
                for cid, o in list(core.orders.items()):
                    if not o.live:
                        continue
                    k = (step + len(cid)) % 5
                    if k == 0:
                        feed(OrderEvent(cid, OrderStatus.OPEN))
                    elif k == 1:
                        feed(OrderEvent(cid, OrderStatus.OPEN, o.intent.amount / 2, D("60000.5"), D("0.0000010"), D(0)))
                    elif k == 2:
                        feed(OrderEvent(cid, OrderStatus.CLOSED, o.intent.amount, D("60001"), D(0), D("0.12")))
                    elif k == 3:
                        feed(OrderEvent(cid, OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS))
                    else:
                        feed(OrderEvent(cid, OrderStatus.CANCELED, o.filled, o.average, o.fee_base, o.fee_quote,
                                        RejectReason.OTHER))  # fmt: skip
                    if step == 3:
                        feed(VenueReduction(D("0.001"), "adl"))
                    if step == 2:
                        feed(FillDeadline())
                if core.state is State.HEDGED:
                    feed(CloseRequested("basis", "basis", D("60100"), D("60050")))
                if core.state is State.FLAT:
                    break
            for event in (Shutdown(), Recovered(), Restarted(2), Fault('boom: \u00e9"q"'), ExitDeadline(), Abort("x")):
                try:
                    feed(event)
                except InvalidTransition:
                    out.append((event, []))
    return out


# sha256 of the corpus's rows as the journal wrote them before the direct spelling (canonical_json of each
# event's and command's dict): a change of a single byte would break every existing journal's chain. The corpus
# is what the core decides, so a change of the core's decisions re-pins it (exact hedges changed the spot
# amounts: `direct == generic` is what holds the encoding to the old one).
STEP_ROWS_SHA256 = "4e02750b53c3622fbd77ed986c6a8ef4175d1e2bbe5c346b6d19311c6cc7a5d1"


def _rows_digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def test_step_rows_are_spelled_exactly_as_journals_always_spelled_them() -> None:
    generic: list[str] = []
    direct: list[str] = []
    kinds: set[str] = set()
    for event, commands in _step_corpus():
        generic.append(canonical_json(event.to_dict()))
        direct.append(event_text(event))
        for command in commands:
            row, fast = command_row(command), command_text(command)
            assert (row is None) == (fast is None)
            if row is not None and fast is not None:
                kinds.add(row[0])
                generic.append(f"{row[0]} {canonical_json(row[1])}")
                direct.append(f"{fast[0]} {fast[1]}")
    assert kinds == {"intent", "transition", "cancel"}
    assert direct == generic
    assert _rows_digest(generic) == STEP_ROWS_SHA256


_DECIMALS = st.decimals(allow_nan=False, allow_infinity=False, places=8, min_value=-(10**9), max_value=10**9)
_ODD = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none(), st.booleans(), st.floats(-1, 1))


@settings(max_examples=300, deadline=None)
@given(
    cid=st.text(max_size=30),
    status=st.sampled_from(list(OrderStatus)),
    numbers=st.lists(st.one_of(_DECIMALS, _ODD), min_size=4, max_size=4),
    reason=st.none() | st.sampled_from(list(RejectReason)) | st.text(max_size=5),
)
def test_an_order_event_row_is_canonical_json_whatever_its_values(
    cid: str, status: OrderStatus, numbers: list[object], reason: object
) -> None:
    """Values of unexpected types (an int fill, a str reason) take the generic path: never a different text."""
    event = OrderEvent(cid, status, *numbers, reason=reason)  # type: ignore[arg-type]
    assert event_text(event) == canonical_json(event.to_dict())


@settings(max_examples=300, deadline=None)
@given(
    cid=st.text(max_size=30),
    symbol=st.text(max_size=12),
    attempt=st.integers(0, 10**6) | st.booleans(),
    amount=st.one_of(_DECIMALS, _ODD),
    price=st.one_of(_DECIMALS, _ODD),
    flags=st.lists(st.one_of(st.booleans(), st.integers(0, 1), st.none()), min_size=3, max_size=3),
    enums=st.tuples(
        st.sampled_from(list(LegRole)),
        st.sampled_from(list(Purpose)),
        st.sampled_from(list(Side)),
        st.sampled_from(list(OrderType)),
    ),
    reason=st.text(max_size=40),
)
def test_intent_and_transition_rows_are_canonical_json_whatever_their_values(
    cid: str, symbol: str, attempt: int, amount: object, price: object, flags: list[object],
    enums: tuple[LegRole, Purpose, Side, OrderType], reason: str,
) -> None:  # fmt: skip
    role, purpose, side, type_ = enums
    intent = OrderIntent(cid, role, purpose, attempt, symbol, side, type_, amount, price,  # type: ignore[arg-type]
                         post_only=flags[0], reduce_only=flags[1], ioc=flags[2])  # type: ignore[arg-type]  # fmt: skip
    for command in (JournalIntent(intent), Transitioned(State.DISPATCHED, Trigger.HEDGE, State.HEDGED, reason)):
        row = command_row(command)
        assert row is not None
        assert command_text(command) == (row[0], canonical_json(row[1]))


@settings(max_examples=300, deadline=None)
@given(cid=st.text(max_size=30) | st.integers(), symbol=st.text(max_size=12) | st.none())
def test_cancel_and_query_rows_are_canonical_json_whatever_their_values(cid: object, symbol: object) -> None:
    """The kill switch's cancel row is spelled directly: the same text as the generic path, odd values too."""
    for command in (CancelOrder(cid, symbol), QueryOrder(cid, symbol)):  # type: ignore[arg-type]
        row = command_row(command)
        assert row is not None
        assert command_text(command) == (row[0], canonical_json(row[1]))


def test_a_step_encoded_ahead_and_bound_to_its_time_later_writes_the_rows_prepare_step_writes(tmp_path: Path) -> None:
    """The kill switch prepares a step before its event comes (`encode_step`), other rows commit meanwhile,
    and it is stamped and written only when the event comes (`bind_step`): the same rows, byte for byte, and
    the same packages table as a step prepared at once."""

    def run(path: Path, ahead: bool) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        with Journal.open(path, wall_clock=lambda: 1_700_000_000.25) as journal:
            if ahead:

                def record_step(pid: str, event: Event, commands: list[Command], state: State, exposure: Any,
                                mono: float) -> None:  # fmt: skip
                    encoded = journal.encode_step(pid, event, commands, state, exposure)
                    journal.record("note", pid, {"meanwhile": True}, mono)  # the chain moves on meanwhile
                    journal.commit([journal.bind_step(encoded, mono)])

                journal.record_step = record_step  # type: ignore[method-assign]
            else:
                real = journal.record_step

                def record_step(pid: str, event: Event, commands: list[Command], state: State, exposure: Any,
                                mono: float) -> None:  # fmt: skip
                    journal.record("note", pid, {"meanwhile": True}, mono)
                    real(pid, event, commands, state, exposure, mono)

                journal.record_step = record_step  # type: ignore[method-assign]
            build_scenario(journal)
            jid = journal.journal_id
            rows = [tuple(str(v).replace(jid, "J") for v in r[1:6]) for r in journal.raw_rows()]
            packages = [tuple(str(v).replace(jid, "J") for v in r) for r in journal.raw_packages()]
            assert verify(path).ok
        return rows, packages

    now, ahead = run(tmp_path / "now.db", ahead=False), run(tmp_path / "ahead.db", ahead=True)
    assert len(now[0]) > 20
    assert ahead == now


_FACT_VALUES = st.one_of(
    _DECIMALS, st.integers(), st.text(max_size=8), st.none(), st.booleans(), st.floats(allow_nan=False),
    st.sampled_from(list(Side)), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.none()),
)  # fmt: skip
_FACT_KEYS = st.one_of(st.text(max_size=12), st.sampled_from(["api_key", "Pass Phrase", "secretX", "status"]))


@settings(max_examples=400, deadline=None)
@given(payload=st.dictionaries(_FACT_KEYS, _FACT_VALUES, max_size=6))
def test_a_fact_row_is_the_guard_then_canonical_json_whatever_its_payload(payload: dict[str, object]) -> None:
    """The flat-dict spelling of free-form facts: the same text as the generic path, the same refusal."""
    try:
        check_no_secrets(payload)
        want = canonical_json(payload)
    except (SecretInPayload, ValueError) as refused:  # a credential-looking key; an infinite float
        want = f"{type(refused).__name__}: {refused}"
    try:
        got = fact_text(payload)
    except (SecretInPayload, ValueError) as refused:
        got = f"{type(refused).__name__}: {refused}"
    assert got == want


def test_a_fact_with_keys_of_mixed_types_takes_the_generic_path() -> None:
    mixed: dict[object, object] = {"a": 1, 2: "b"}
    with pytest.raises(TypeError):
        canonical_json(mixed)
    with pytest.raises(TypeError):
        fact_text(mixed)  # type: ignore[arg-type]
    assert fact_text({1: None}) == canonical_json({1: None})  # type: ignore[dict-item]


def _steps_in_one_or_many_commits(path: Path, *, together: bool) -> list[dict[str, object]]:
    """A package created in the transaction and one that existed, two steps each (dispatch, then a fill)."""
    with Journal.open(path, wall_clock=lambda: 1.0) as journal:
        existing, new = _plan(journal, 1), _plan(journal, 2)
        journal.package_created(existing, {"source": "test"}, 1.0)
        journal.defer_created(new, {"source": "test"}, 1.0)
        writes = []
        for plan in (new, existing):
            core = PackageCore(plan)
            commands = core.handle(Dispatch())
            writes.append(journal.prepare_step(plan.package_id, Dispatch(), commands, core.state, core.exposure(), 2.0))
            o = next(iter(core.orders.values()))
            fill = OrderEvent(o.intent.client_order_id, OrderStatus.OPEN, o.intent.amount / 2, D(60000), D(0), D(0))
            commands = core.handle(fill)
            writes.append(journal.prepare_step(plan.package_id, fill, commands, core.state, core.exposure(), 3.0))
        if together:
            journal.commit(writes)
        else:
            for write in writes:
                journal.commit([write])
        assert journal.head[0] > 4
        return [p.to_dict() for p in journal.packages()]


def test_steps_sharing_a_transaction_leave_the_packages_table_as_one_commit_each_does(tmp_path: Path) -> None:
    # The packages table is written once per package per transaction (the creation with its first step's
    # state): the view must be exactly what one commit per step leaves.
    alone = _steps_in_one_or_many_commits(tmp_path / "alone.db", together=False)
    grouped = _steps_in_one_or_many_commits(tmp_path / "grouped.db", together=True)
    assert grouped == alone
    assert [p["state"] for p in alone] == ["dispatched", "dispatched"]
    assert all(p["last_transition"] == "pending->dispatched (dispatch)" for p in alone)
    assert verify(tmp_path / "alone.db").ok and verify(tmp_path / "grouped.db").ok


@settings(max_examples=200, deadline=None)
@given(spec=st.dictionaries(st.text(max_size=8), _FACT_VALUES, max_size=5), style=st.sampled_from(list(ExecutionStyle)))
def test_a_creation_row_is_canonical_json_of_plan_and_spec(spec: dict[str, object], style: ExecutionStyle) -> None:
    plan = dataclasses.replace(model_plan(), style=style).to_dict()
    try:
        check_no_secrets({"plan": plan, "spec": spec})
        want = (canonical_json({"plan": plan, "spec": spec}), canonical_json(plan))
    except (SecretInPayload, ValueError) as refused:
        want = (type(refused).__name__, str(refused))
    try:
        got = created_text(plan, spec)
    except (SecretInPayload, ValueError) as refused:
        got = (type(refused).__name__, str(refused))
    assert got == want


_DECIMALS = st.decimals(allow_nan=False, allow_infinity=False, places=8, min_value=-(10**9), max_value=10**9)


@st.composite
def _plans(draw: st.DrawFn) -> PackagePlan:
    def leg(base: LegPlan) -> LegPlan:
        return dataclasses.replace(
            base, symbol=draw(st.text(max_size=12)), price=draw(_DECIMALS), step=draw(_DECIMALS),
            dust=draw(_DECIMALS), min_order=draw(st.none() | _DECIMALS), amount=draw(st.none() | _DECIMALS),
            fee_rate=draw(_DECIMALS),
        )  # fmt: skip

    plan = model_plan()
    return dataclasses.replace(
        plan, package_id=draw(st.text(max_size=10)), client_id_prefix=draw(st.text(max_size=16)),
        quantity=draw(_DECIMALS), spot=leg(plan.spot), perp=leg(plan.perp),
        policy=draw(st.sampled_from(list(OrphanPolicy))), style=draw(st.sampled_from(list(ExecutionStyle))),
        maker=draw(st.sampled_from(list(LegRole))), sweep=draw(_DECIMALS),
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(plan=_plans())
def test_a_plan_spelled_directly_is_canonical_json_of_its_dict(plan: PackagePlan) -> None:
    want = canonical_json(plan.to_dict())
    assert store.plan_text(plan) == want
    assert store.plan_text(plan) == want  # again, its legs' texts from the cache
    # A leg equal in value but another object is spelled afresh, never taken for the cached one.
    twin = dataclasses.replace(plan, spot=dataclasses.replace(plan.spot), perp=dataclasses.replace(plan.perp))
    assert store.plan_text(twin) == want
    assert created_text(plan, {"a": 1}) == created_text(plan.to_dict(), {"a": 1})


def test_a_plan_with_another_leg_is_spelled_afresh_not_read_from_the_cache() -> None:
    # The cache is by identity, and keeps the leg it spelled: a leg freed and its id reused by another is
    # compared as an object, never taken for the old one.
    plan = model_plan()
    first = store.plan_text(plan)
    other = dataclasses.replace(plan, spot=dataclasses.replace(plan.spot, price=plan.spot.price + 1))
    assert store.plan_text(other) != first and store.plan_text(other) == canonical_json(other.to_dict())


@pytest.mark.parametrize("others", [0, 2])
def test_a_packages_row_deleted_behind_the_writer_fails_the_transaction_naming_it(db: Path, others: int) -> None:
    with Journal.open(db) as journal:
        desk = Desk(journal)
        cores = [desk.new_package() for _ in range(others + 1)]
        victim = cores[-1].plan.package_id
        journal._conn.execute("DELETE FROM packages WHERE package_id = ?", (victim,))
        before = journal.head
        writes = []
        for core in cores:
            commands = core.handle(Dispatch())
            pid = core.plan.package_id
            writes.append(journal.prepare_step(pid, Dispatch(), commands, core.state, core.exposure(), 2.0))
        with pytest.raises(UnknownPackage, match=f"package_id '{victim}': row vanished"):
            journal.commit(writes)
        assert journal.head == before  # nothing of the group was written
        assert [p.state for p in journal.packages()] == [State.PENDING] * others


def test_every_row_of_a_transaction_carries_its_one_wall_time(tmp_path: Path) -> None:
    # The wall clock is read once per transaction (not per prepared row): a group's rows, facts and steps
    # alike, and the packages view it writes carry that one stamp; the next transaction reads it again.
    reads = itertools.count(1)
    with Journal.open(tmp_path / "j.db", wall_clock=lambda: float(next(reads))) as journal:
        plan = _plan(journal, 1)
        journal.defer_created(plan, {"source": "test"}, 1.0)
        core = PackageCore(plan)
        commands = core.handle(Dispatch())
        writes = [
            journal.prepare_fact("ack", None, {"status": "open"}, 1.5),
            journal.prepare_step(plan.package_id, Dispatch(), commands, core.state, core.exposure(), 2.0),
            journal.prepare_fact("ack", plan.package_id, {"status": "open"}, 2.5),
            journal.prepare_fact("note", None, {"text": "x"}, 3.0),
        ]
        journal.commit(writes)
        journal.record("note", None, {"text": "after"}, 4.0)
        rows = list(journal.rows())
        assert [r.wall_time for r in rows[:-1]] == [1.0] * (len(rows) - 1)  # the group's transaction: read 1
        assert rows[-1].wall_time == 2.0  # its own transaction: read 2
        assert [r.mono_time for r in rows if r.kind in ("ack", "note")] == [1.5, 2.5, 3.0, 4.0]
        view = journal.package(plan.package_id)
        assert (view.created_wall, view.updated_wall) == (1.0, 1.0)
    assert verify(tmp_path / "j.db").ok


def test_a_wall_clock_gone_wrong_refuses_the_transaction_before_it_begins(tmp_path: Path) -> None:
    now = [float("nan")]
    with Journal.open(tmp_path / "j.db", wall_clock=lambda: now[0]) as journal:
        write = journal.prepare_fact("ack", None, {"status": "open"}, 1.0)  # prepared: the clock is not read yet
        with pytest.raises(ValueError, match="journal time nan is not a finite number"):
            journal.commit([write])
        assert journal.head[0] == 0 and list(journal.rows()) == []
        now[0] = 5.0  # the next transaction chains normally
        journal.commit([journal.prepare_fact("ack", None, {"status": "open"}, 1.0)])
        assert [(r.seq, r.wall_time) for r in journal.rows()] == [(1, 5.0)]
    assert verify(tmp_path / "j.db").ok


def test_a_run_of_facts_chains_exactly_as_one_row_at_a_time(tmp_path: Path) -> None:
    # `commit` chains a run of `prepare_fact` rows in one loop; `record` inside a batch chains one at a time
    # (`_insert`): the same rows, byte for byte, and a step between facts keeps its place.
    def build(path: Path, *, grouped: bool) -> list[tuple[Any, ...]]:
        with Journal.open(path, wall_clock=lambda: 1234567890.125) as journal:
            plan = _plan(journal, 1)
            journal.package_created(plan, {"source": "test"}, 1.0)
            core = PackageCore(plan)
            commands = core.handle(Dispatch())
            facts = [("ack", None, {"status": "open", "n": i}, 1.0 + i) for i in range(3)]
            facts += [("ack", "pkg1", {"status": "filled", "v": D("0.5")}, 9.0)]
            if grouped:
                writes = [journal.prepare_fact(*f) for f in facts[:2]]
                writes.append(journal.prepare_step("pkg1", Dispatch(), commands, core.state, core.exposure(), 5.0))
                writes += [journal.prepare_fact(*f) for f in facts[2:]]
                journal.commit(writes)
            else:
                with journal.batch():
                    for f in facts[:2]:
                        journal.record(*f)
                    journal.record_step("pkg1", Dispatch(), commands, core.state, core.exposure(), 5.0)
                    for f in facts[2:]:
                        journal.record(*f)
            return list(journal.raw_rows())

    Journal.open(tmp_path / "empty.db").close()  # both from one file: the same journal id, so the same chain
    for name in ("g.db", "o.db"):
        (tmp_path / name).write_bytes((tmp_path / "empty.db").read_bytes())
    grouped = build(tmp_path / "g.db", grouped=True)
    assert grouped == build(tmp_path / "o.db", grouped=False)
    kinds = [r[1] for r in grouped]
    assert kinds[:4] == ["package_created", "ack", "ack", "event"] and kinds[-2:] == ["ack", "ack"]
    assert verify(tmp_path / "g.db").ok


def test_a_fact_of_a_deferred_package_in_a_group_writes_its_creation_first(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        other, late = _plan(journal, 1), _plan(journal, 2)
        journal.defer_created(other, {"source": "test"}, 1.0)  # pending, never mentioned: never written
        journal.defer_created(late, {"source": "test"}, 1.0)
        journal.commit([
            journal.prepare_fact("ack", None, {"status": "open"}, 2.0),
            journal.prepare_fact("ack", "pkg2", {"status": "open"}, 2.0),
            journal.prepare_fact("ack", "pkg2", {"status": "filled"}, 2.0),
        ])  # fmt: skip
        assert [(r.kind, r.package_id) for r in journal.rows()] == [
            ("ack", None), ("package_created", "pkg2"), ("ack", "pkg2"), ("ack", "pkg2"),
        ]  # fmt: skip
        assert journal.package_ids() == ["pkg2"]
    assert verify(tmp_path / "j.db").ok
