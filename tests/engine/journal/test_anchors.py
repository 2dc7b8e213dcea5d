"""Signed anchors of the journal's head (engine/_anchors.py; issue 10, defect 7).

Each attack is done the way someone who can write the file would do it: drop the append-only triggers,
change rows, re-chain what follows, rewrite `meta.head` and the packages table so the chain check and the
replay pass. The chain alone is fooled (asserted, so the test shows what the anchors add); the anchors are not.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from decimal import Decimal as D
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from legguard.domain import OrderStatus, RejectReason
from legguard.engine.journal._anchors import (
    Anchorer,
    AnchorError,
    load_key,
    load_or_create_key,
    public_key_text,
    verify_anchors,
)
from legguard.engine.journal._replay import replay_package, verify
from legguard.engine.journal._store import Journal, row_hash, transition_text
from legguard.fsm import Dispatch, Event, OrderEvent, PackageCore, PackagePlan


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


class World:
    """A journal with two packages (pkg1 hedged, pkg2 unwinding after its perp was rejected, with an
    `order_error` fact), anchored; the key and anchors file live beside it (outside the journal)."""

    def __init__(self, tmp: Path) -> None:
        self.db, self.anchors, self.keyfile = tmp / "j.db", tmp / "j.db.anchors", tmp / "keys" / "anchor.key"
        self.key = load_or_create_key(self.keyfile)
        self.mono = 10.0
        with Journal.open(self.db) as journal:
            self.journal_id = journal.journal_id
            self.anchorer = Anchorer(journal, self.key, self.anchors)
            cores = []
            for _ in range(2):
                plan = _plan(journal, journal.next_package_number())
                journal.package_created(plan, {"base": "ETH"}, self.mono)
                cores.append(PackageCore(plan))
            hedged, broken = cores
            p1, p2 = hedged.plan.client_id_prefix, broken.plan.client_id_prefix
            self.step(journal, hedged, Dispatch())
            self.step(journal, hedged, OrderEvent(f"{p1}-SE0", OrderStatus.CLOSED, D("0.5"), D("3000")))
            self.anchorer.anchor("periodic")
            self.step(journal, hedged, OrderEvent(f"{p1}-PE0", OrderStatus.CLOSED, D("0.5"), D("3003")))
            self.step(journal, broken, Dispatch())
            self.step(journal, broken, OrderEvent(f"{p2}-SE0", OrderStatus.CLOSED, D("0.5"), D("3000")))
            self.before_error = journal.head
            journal.record("order_error", "pkg2", {"client_order_id": f"{p2}-PE0", "error": "would cross"}, 12.0)
            self.step(journal, broken, OrderEvent(f"{p2}-PE0", OrderStatus.REJECTED, reason=RejectReason.OTHER))
            journal.record("note", None, {"what": "last row"}, 13.0)
            self.anchored = self.anchorer.anchor("shutdown")
            assert self.anchored is not None
            self.head = journal.head

    def step(self, journal: Journal, core: PackageCore, event: Event) -> None:
        self.mono += 0.5
        commands = core.handle(event)
        journal.record_step(core.plan.package_id, event, commands, core.state, core.exposure(), self.mono)

    def check(self, pinned: bool = True) -> str | None:
        with Journal.open(self.db, readonly=True) as journal:
            result = verify_anchors(journal, self.anchors, self.key.public_key() if pinned else None)
        return result.problem

    # --- the tamperer ---

    def conn(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db, isolation_level=None)
        conn.execute("DROP TRIGGER IF EXISTS journal_no_update")
        conn.execute("DROP TRIGGER IF EXISTS journal_no_delete")
        return conn

    def rechain(self, conn: sqlite3.Connection) -> None:
        """Renumber every row 1.., recompute every prev_hash and hash, and rewrite meta.head: the chain then
        verifies from genesis to the new head."""
        rows = conn.execute("SELECT seq, kind, package_id, payload, wall_time, mono_time FROM journal ORDER BY seq")
        rows = rows.fetchall()
        conn.execute("DELETE FROM journal")
        prev = _genesis(self.journal_id)
        renumbered: dict[int, int] = {}
        for new_seq, (old_seq, kind, pid, payload, wall, mono) in enumerate(rows, 1):
            digest = row_hash(prev, new_seq, kind, pid, payload, wall, mono)
            conn.execute("INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (new_seq, kind, pid, payload, wall, mono, prev, digest))  # fmt: skip
            renumbered[old_seq] = new_seq
            prev = digest
        conn.execute("UPDATE meta SET value = ? WHERE key = 'head'", (f"{len(rows)}:{prev}",))
        for pid, created in conn.execute("SELECT package_id, created_seq FROM packages").fetchall():
            conn.execute("UPDATE packages SET created_seq = ? WHERE package_id = ?", (renumbered[created], pid))

    def rewrite_packages_table(self) -> None:
        """Make the packages table say what replaying the (tampered) journal says."""
        with Journal.open(self.db, readonly=True) as journal:
            views = {}
            for pid in journal.package_ids():
                core = replay_package(journal, pid)
                transitions = [r for r in journal.timeline(pid) if r.kind == "transition"]
                last = transition_text(transitions[-1].payload) if transitions else None
                exp = core.exposure()
                views[pid] = (core.state.value, str(exp.spot), str(exp.perp), int(exp.unknown), last)
        conn = self.conn()
        for pid, (state, spot, perp, unknown, last) in views.items():
            conn.execute("UPDATE packages SET state = ?, spot = ?, perp = ?, unknown = ?, last_transition = ? "
                         "WHERE package_id = ?", (state, spot, perp, unknown, last, pid))  # fmt: skip
        conn.close()


def _genesis(journal_id: str) -> str:
    from legguard.engine.journal._store import genesis_hash

    return genesis_hash(journal_id)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_an_untouched_journal_extends_every_anchor(world: World) -> None:
    assert verify(world.db).ok
    assert world.check() is None
    lines = world.anchors.read_text().splitlines()
    assert [json.loads(line)["reason"] for line in lines] == ["periodic", "shutdown"]
    assert json.loads(lines[-1])["seq"] == world.head[0]


def test_rows_appended_after_the_last_anchor_still_verify(world: World) -> None:
    # Documented limit: rows after the last anchor are protected only by the chain, not yet by a signature.
    with Journal.open(world.db) as journal:
        journal.record("note", None, {"after": "the last anchor"}, 20.0)
    assert verify(world.db).ok and world.check() is None


def test_truncation_with_rewritten_head_and_packages_table_is_caught(world: World) -> None:
    # Arrange: drop the newest rows (pkg2's rejection and the last note), rewrite meta.head and the table.
    conn = world.conn()
    last_kept = world.before_error[0]
    conn.execute("DELETE FROM journal WHERE seq > ?", (last_kept,))
    (digest,) = conn.execute("SELECT hash FROM journal WHERE seq = ?", (last_kept,)).fetchone()
    conn.execute("UPDATE meta SET value = ? WHERE key = 'head'", (f"{last_kept}:{digest}",))
    conn.close()
    world.rewrite_packages_table()

    # Assert: the chain and the replay are fooled; the anchor is not.
    assert verify(world.db).ok, "the attack is meant to fool the chain check"
    problem = world.check()
    assert problem is not None
    assert f"ends at seq {last_kept} but seq {world.head[0]} was anchored" in problem
    assert "were deleted" in problem


def test_deleting_a_row_in_the_middle_and_rechaining_is_caught(world: World) -> None:
    # Arrange: the order_error fact disappears; every later row is renumbered and re-hashed, and a filler
    # row (through the journal's own writer) makes the journal as long as it was.
    conn = world.conn()
    conn.execute("DELETE FROM journal WHERE kind = 'order_error'")
    world.rechain(conn)
    conn.close()
    with Journal.open(world.db) as journal:
        journal.record("note", None, {"what": "filler"}, 14.0)
        assert journal.head[0] == world.head[0]
    world.rewrite_packages_table()

    assert verify(world.db).ok, "the attack is meant to fool the chain check"
    problem = world.check()
    assert problem is not None and f"row {world.head[0]} has hash" in problem, problem
    assert "rewritten, inserted or deleted" in problem


def test_a_rewritten_packages_table_alone_is_caught_by_the_replay(world: World) -> None:
    conn = world.conn()
    conn.execute("UPDATE packages SET state = 'flat', spot = '0', perp = '0' WHERE package_id = 'pkg1'")
    conn.close()
    report = verify(world.db)
    assert not report.ok and any("pkg1" in p for p in report.problems)
    assert world.check() is None  # the rows themselves are intact: the anchors have nothing to say


def test_an_edited_anchor_does_not_verify(world: World) -> None:
    lines = world.anchors.read_text().splitlines()
    edited = json.loads(lines[-1])
    edited["seq"] -= 1  # e.g. to make a truncation fit
    world.anchors.write_text("\n".join([*lines[:-1], json.dumps(edited)]) + "\n")
    problem = world.check()
    assert problem is not None and "not signed by the pinned key" in problem


def test_anchors_forged_with_another_key_fail_against_the_pinned_key(world: World) -> None:
    # The forger truncates the journal AND rewrites the anchors file, signing with a key of their own.
    conn = world.conn()
    conn.execute("DELETE FROM journal WHERE seq > 3")
    (digest,) = conn.execute("SELECT hash FROM journal WHERE seq = 3").fetchone()
    conn.execute("UPDATE meta SET value = ? WHERE key = 'head'", (f"3:{digest}",))
    conn.close()
    world.anchors.unlink()
    with Journal.open(world.db) as journal:
        Anchorer(journal, Ed25519PrivateKey.generate(), world.anchors).anchor("shutdown")

    assert world.check(pinned=True) is not None
    # Documented limit: without --public-key the key in the anchors file is trusted, and a forger controls it.
    assert world.check(pinned=False) is None


def test_anchors_of_another_journal_do_not_count(world: World, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with Journal.open(other) as journal:
        journal.record("note", None, {"x": 1}, 1.0)
        problem = verify_anchors(journal, world.anchors, world.key.public_key()).problem
    assert problem is not None and f"no anchor of journal {journal.journal_id}" in problem


def test_an_anchor_is_written_only_when_the_head_moved(world: World) -> None:
    with Journal.open(world.db) as journal:
        anchorer = Anchorer(journal, world.key, world.anchors)
        first = anchorer.anchor("periodic")
        assert first is not None and anchorer.anchor("periodic") is None
        assert journal.meta()["synced_head"] == f"{first.seq}:{first.head}"


def test_the_key_file_is_created_0600_reused_and_never_printed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "k" / "anchor.key"
    caplog.set_level(logging.INFO, logger="legguard")
    key = load_or_create_key(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_text(load_or_create_key(path).public_key()) == public_key_text(key.public_key())
    secret = path.read_text()
    body = "".join(secret.splitlines()[1:-1])
    db = tmp_path / "j.db"
    with Journal.open(db) as journal:
        anchorer = Anchorer(journal, key, tmp_path / "a.anchors")
        journal.record("note", None, {"x": 1}, 1.0)
        anchorer.anchor("shutdown")
        assert body not in repr(anchorer)
    assert body not in caplog.text and body not in (tmp_path / "a.anchors").read_text()
    assert "journal anchor:" in caplog.text  # every anchor is also written to the log


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "anchor.key"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(AnchorError, match="readable by others"):
        load_key(path)
