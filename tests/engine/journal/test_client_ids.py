"""Defect 5 of issue 10: client order ids are unique across the journal's whole life, even when a crash loses
the last commits (`durability = "process"` on a power loss), because the venue accepts an id again once the
first order with it is closed (Binance: ids are unique among OPEN orders only).

A power loss is modelled faithfully enough for this: what survives is the journal as of its last commit made
with synchronous=FULL (WAL commits reach the disk in order, so a synced commit carries every one before it).
The recovery side (a lost unwind found at the venue, a fresh epoch in new ids) is in test_recovery.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from legguard.engine import Durability, Journal
from legguard.fsm import LegRole, Purpose, client_order_id


def _copy(db: Path, to: Path) -> None:
    to.unlink(missing_ok=True)
    with sqlite3.connect(db) as source, sqlite3.connect(to) as target:
        source.backup(target)
    source.close()
    target.close()


def _power_loss(db: Path, durable: Path) -> None:
    """The machine loses power: only the durable copy is left."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    durable.rename(db)


class _SyncWatch:
    """Copies the journal after every commit made with synchronous=FULL. Watches the SQL the journal runs, so
    it needs nothing from the journal's API (it runs unchanged against the code before the fix)."""

    def __init__(self, journal: Journal, db: Path, durable: Path) -> None:
        self.db, self.durable = db, durable
        self.full = journal.pragma("synchronous") >= 2
        self.synced_commit_pending = False
        journal._conn.set_trace_callback(self._trace)

    def _trace(self, sql: str) -> None:
        text = sql.replace(" ", "").upper()
        if text.startswith("PRAGMASYNCHRONOUS="):
            self.full = text.split("=", 1)[1] in ("2", "FULL", "3", "EXTRA")
        elif text.startswith("COMMIT") and self.full:
            self.synced_commit_pending = True

    def after(self) -> None:
        """Call after each journal call: takes the copy if that call made a synced commit."""
        if self.synced_commit_pending:
            self.synced_commit_pending = False
            _copy(self.db, self.durable)


def test_a_power_loss_that_loses_commits_never_hands_out_a_package_number_again(tmp_path: Path) -> None:
    # Arrange: the fresh journal is durable; three packages are numbered and journaled with
    # `durability = "process"` (no fsync per commit).
    db, durable = tmp_path / "journal.db", tmp_path / "durable.db"
    with Journal.open(db, Durability.PROCESS) as journal:
        _copy(db, durable)
        watch = _SyncWatch(journal, db, durable)
        used = []
        for _ in range(3):
            used.append(journal.next_package_number())
            watch.after()
            journal.record("note", None, {"package": used[-1]}, 1.0)
            watch.after()

    # Act: the machine loses power; the engine restarts on what survived and numbers a new package.
    _power_loss(db, durable)
    with Journal.open(db, Durability.PROCESS) as journal:
        fresh = journal.next_package_number()

    # Assert: a number whose client ids may have reached the venue is never handed out again.
    assert fresh not in used, f"package number {fresh} handed out again after a power loss (used: {used})"


def test_ids_fit_binance_and_the_epoch_changes_every_id() -> None:
    prefix = "lgzz99999999"  # the longest prefix: 4-char journal id, 6-digit package number... and more
    ids = {
        client_order_id(prefix, role, purpose, attempt, epoch)
        for role in LegRole
        for purpose in Purpose
        for attempt in (0, 49)
        for epoch in (0, 1, 9_999_999)
    }
    assert len(ids) == 2 * 2 * 2 * 3  # the epoch is part of the identity
    assert all(len(cid) <= 36 and cid.replace("-", "").replace("_", "").isalnum() for cid in ids), ids
    # Before any restart ids are spelled as they always were (old journals replay unchanged).
    assert client_order_id("lgab12000001", LegRole.SPOT, Purpose.UNWIND, 0) == "lgab12000001-SU0"
