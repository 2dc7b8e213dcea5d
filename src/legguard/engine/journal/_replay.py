"""Proof from the journal: check the hash chain, then re-run every package's journaled events through a
fresh `PackageCore` and demand that it issues exactly the journaled commands and ends in the recorded state.

`verify()` backs `legguard audit verify`; `replay_package()` rebuilds a core for a recovering engine.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from legguard.fsm._core import PackageCore, PackagePlan
from legguard.fsm._events import event_from_dict

from ._pnl import FUNDING, LATE_FEE, PNL, apply_late_fee, funding_amount, package_pnl
from ._store import (
    EVENT,
    FACT_KIND_RE,
    PACKAGE_CREATED,
    REPLAYED_KINDS,
    TRANSITION,
    Journal,
    JournalError,
    canonical_json,
    command_row,
    genesis_hash,
    row_hash,
    summarize,
    transition_text,
)

# A badly damaged journal must still produce a readable report.
MAX_PROBLEMS: Final = 200


class ReplayMismatch(JournalError):
    """Replaying a package's journaled events does not reproduce its journaled commands."""


@dataclass(slots=True)
class VerifyReport:
    path: str
    journal_id: str
    rows_checked: int = 0
    packages_checked: int = 0
    problems: list[str] = field(default_factory=list)
    head_seq: int = 0
    head_hash: str = ""  # print it, keep it elsewhere: only an external anchor proves nothing was rewritten
    omitted: int = 0  # problems beyond MAX_PROBLEMS, counted but not listed

    @property
    def ok(self) -> bool:
        return not self.problems and not self.omitted

    def add(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.omitted += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "journal_id": self.journal_id,
            "rows_checked": self.rows_checked,
            "packages_checked": self.packages_checked,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "problems": list(self.problems),
            "problems_omitted": self.omitted,
        }


class _PackageReplay:
    """Feeds one package's rows, in order, through a fresh core. Stops at the first divergence: after
    that the core's state is no longer the engine's, so later differences would only be echoes."""

    def __init__(self, package_id: str) -> None:
        self.package_id = package_id
        self.core: PackageCore | None = None
        self.plan: dict[str, Any] | None = None
        self.created_seq: int | None = None
        self.expected: deque[tuple[str, dict[str, Any]]] = deque()
        self.events = 0
        self.last_seq = 0
        self.last_transition: str | None = None
        self.failed: str | None = None
        self.funding = Decimal(0)

    def feed(self, seq: int, kind: str, payload: dict[str, Any]) -> str | None:
        if self.failed is not None:
            return None
        problem = self._feed(seq, kind, payload)
        self.last_seq = seq
        if problem is not None:
            self.failed = problem
        return problem

    def _feed(self, seq: int, kind: str, payload: dict[str, Any]) -> str | None:
        who = f"seq {seq}: package {self.package_id}"
        if kind == PACKAGE_CREATED:
            if self.core is not None:
                return f"{who}: created a second time (first at seq {self.created_seq})"
            try:
                plan = PackagePlan.from_dict(payload["plan"])
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                return f"{who}: package_created payload has no readable plan ({type(exc).__name__}: {exc})"
            if plan.package_id != self.package_id:
                return f"{who}: the plan names package {plan.package_id!r}, the row {self.package_id!r}"
            self.core, self.plan, self.created_seq = PackageCore(plan), payload["plan"], seq
            return None
        if self.core is None:
            return f"{who}: {kind} row before the package was created"
        if kind == FUNDING:
            try:
                self.funding += funding_amount(payload)
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                return f"{who}: unreadable funding payload ({type(exc).__name__}: {exc})"
            return None
        if kind == LATE_FEE:  # an order's fees reported after the package finished: part of its accounting
            try:
                apply_late_fee(self.core, payload)
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                return f"{who}: unreadable late_fee payload ({type(exc).__name__}: {exc})"
            return None
        if kind == PNL:  # the accounting journaled when the package went flat, recomputed from the same facts
            # Every figure the row holds must be what the facts give; a figure a later version added to the
            # accounting is not required of rows written before it.
            recomputed = package_pnl(self.core, self.funding).to_dict()
            wrong = sorted(k for k in payload if k not in recomputed or canonical_json(payload[k]) != canonical_json(
                recomputed[k]))  # fmt: skip
            if wrong or "realized" not in payload:
                shown = {k: recomputed.get(k) for k in wrong or ["realized"]}
                return f"{who}: journaled pnl differs in {wrong or ['realized']}: the replayed facts give {shown}"
            return None
        if kind not in REPLAYED_KINDS:
            return None  # audited facts (ack, fault, ...): not decisions, nothing to re-derive
        if kind == EVENT:
            if self.expected:
                k, p = self.expected[0]
                return (
                    f"{who}: the replayed core issued {k} [{summarize(k, p)}] before this event, but the journal "
                    f"has no such row (deleted?)"
                )
            try:
                event = event_from_dict(payload)
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                return f"{who}: unreadable event payload ({type(exc).__name__}: {exc})"
            try:
                commands = self.core.handle(event)
            except Exception as exc:  # the core refusing a journaled event is exactly what we report
                return f"{who}: replaying event [{summarize(kind, payload)}] raised {type(exc).__name__}: {exc}"
            self.events += 1
            for command in commands:
                row = command_row(command)
                if row is not None:
                    self.expected.append(row)
            return None
        if not self.expected:
            return f"{who}: journal has {kind} [{summarize(kind, payload)}] that the replayed core did not issue"
        want_kind, want = self.expected.popleft()
        if want_kind != kind or canonical_json(want) != canonical_json(payload):
            return (
                f"{who}: journal has {kind} [{summarize(kind, payload)}] but the replayed core issued "
                f"{want_kind} [{summarize(want_kind, want)}]"
            )
        if kind == TRANSITION:
            self.last_transition = transition_text(payload)
        return None

    def finish(self) -> str | None:
        if self.failed is None and self.expected:
            k, p = self.expected[0]
            problem = (
                f"package {self.package_id}: the replayed core issued {len(self.expected)} command row(s) after "
                f"seq {self.last_seq} that are not in the journal (first: {k} [{summarize(k, p)}])"
            )
            self.failed = problem
            return problem
        return None


def _check_kind(seq: int, kind: str, package_id: str | None) -> str | None:
    if kind in REPLAYED_KINDS:
        return None if package_id is not None else f"seq {seq}: {kind} row without a package_id"
    if not FACT_KIND_RE.match(kind):
        return f"seq {seq}: malformed row kind {kind!r}"
    return None


def verify(path: str | Path) -> VerifyReport:
    """Check the journal at `path`. Raises JournalNotFound / NotAJournal if there is no journal to check;
    every problem found IN the journal is reported, first bad row first."""
    with Journal.open(path, readonly=True) as journal, journal.snapshot():
        return _verify(journal)


def _verify(journal: Journal) -> VerifyReport:
    """Two passes, so memory stays bounded by the largest package rather than the whole journal: the
    chain streams through every row; then each package is replayed alone from its own rows (indexed)."""
    report = VerifyReport(path=str(journal.path), journal_id=journal.journal_id)
    chain: list[str] = []  # chain problems come first: they name the first bad row
    replay: list[str] = []
    prev_seq, prev_hash = 0, genesis_hash(journal.journal_id)
    for seq, kind, package_id, text, wall, mono, stored_prev, digest in journal.raw_rows():
        report.rows_checked += 1
        if row_hash(stored_prev, seq, kind, package_id, text, wall, mono) != digest:
            chain.append(f"seq {seq}: hash does not match the row's content (the row was edited)")
        if seq != prev_seq + 1:
            gap = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}..{seq - 1}"
            chain.append(f"seq {seq}: follows seq {prev_seq}; row(s) {gap} are missing (deleted)")
        elif stored_prev != prev_hash:
            chain.append(
                f"seq {seq}: prev_hash does not match "
                + (
                    "this journal's genesis (journal_id changed, or rows spliced from another journal)"
                    if prev_seq == 0
                    else f"the hash of seq {prev_seq} (seq {prev_seq} was rewritten, or a row inserted)"
                )
            )
        prev_seq, prev_hash = seq, digest
        if (problem := _check_kind(seq, kind, package_id)) is not None:
            replay.append(problem)
    _check_head(journal, prev_seq, prev_hash, chain)
    report.head_seq, report.head_hash = prev_seq, prev_hash

    table = {row[0]: row for row in journal.raw_packages()}
    journaled = journal.raw_package_ids()
    for package_id in journaled:
        pkg = _replay_rows(package_id, journal.raw_package_rows(package_id), replay)
        if (problem := pkg.finish()) is not None:
            replay.append(problem)
        row = table.pop(package_id, None)
        if row is None:
            if pkg.core is not None:
                replay.append(
                    f"package {package_id}: journaled at seq {pkg.created_seq} but missing from the packages table"
                )
        else:
            replay.extend(_check_package_row(pkg, row))
    for package_id in table:  # rows with no journal history at all
        replay.append(f"package {package_id}: in the packages table but the journal has no package_created row for it")
    report.packages_checked = len(journaled)
    for problem in chain + replay:
        report.add(problem)
    return report


def _replay_rows(package_id: str, rows: Iterable[tuple[int, str, str]], problems: list[str]) -> _PackageReplay:
    pkg = _PackageReplay(package_id)
    for seq, kind, text in rows:
        try:
            payload = json.loads(text)
            if not isinstance(payload, dict):
                raise TypeError(f"payload is a {type(payload).__name__}, not an object")
        except (ValueError, TypeError) as exc:
            problems.append(f"seq {seq}: package {package_id}: unreadable payload ({exc})")
            pkg.failed = pkg.failed or "unreadable payload"
            continue
        if (problem := pkg.feed(seq, kind, payload)) is not None:
            problems.append(problem)
    return pkg


def _check_head(journal: Journal, last_seq: int, last_hash: str, chain: list[str]) -> None:
    """The meta head anchor is written with every commit: rows cut off the end are caught here."""
    head = journal.meta().get("head", "")
    seq_text, _, anchored = head.partition(":")
    if not seq_text.isdigit():
        chain.append(f"meta head anchor {head!r} is unreadable")
        return
    if (int(seq_text), anchored) != (last_seq, last_hash):
        chain.append(
            f"journal ends at seq {last_seq} but the head anchor says seq {seq_text}: rows were deleted from the "
            f"end or appended behind the journal writer's back"
        )


def _check_package_row(pkg: _PackageReplay, row: tuple[Any, ...]) -> list[str]:
    """The packages table row against the replayed core's final state."""
    pid, state, spot, perp, unknown, plan, created_seq, *_rest, last_transition = row
    who = f"package {pid}"
    if pkg.core is None:
        return [f"{who}: in the packages table but the journal has no package_created row for it"]
    if pkg.failed is not None:
        return []  # already reported; its replayed state is not meaningful
    problems: list[str] = []
    core = pkg.core
    exposure = core.exposure()
    after = f"replaying its {pkg.events} event(s)"
    if state != core.state.value:
        problems.append(f"{who}: packages table says state {state!r} but {after} gives {core.state.value!r}")
    try:
        stored = (Decimal(spot), Decimal(perp), bool(unknown))
    except (InvalidOperation, TypeError):
        problems.append(f"{who}: packages table exposure is unreadable (spot {spot!r}, perp {perp!r})")
    else:
        if stored != (exposure.spot, exposure.perp, exposure.unknown):
            problems.append(
                f"{who}: packages table says exposure spot {spot} perp {perp} unknown {bool(unknown)} but "
                f"{after} gives spot {exposure.spot} perp {exposure.perp} unknown {exposure.unknown}"
            )
    if last_transition != pkg.last_transition:
        problems.append(
            f"{who}: packages table says last transition {last_transition!r} but the journal's is "
            f"{pkg.last_transition!r}"
        )
    if created_seq != pkg.created_seq or plan != canonical_json(pkg.plan):
        problems.append(f"{who}: packages table plan/created_seq differ from its package_created row")
    return problems


def replay_package(journal: Journal, package_id: str) -> PackageCore:
    """A fresh core fed every journaled event of `package_id`: the state a recovering engine resumes from.
    Raises ReplayMismatch if the journal's commands are not what the core issues."""
    pkg = _PackageReplay(package_id)
    for row in journal.timeline(package_id):
        if (problem := pkg.feed(row.seq, row.kind, row.payload)) is not None:
            raise ReplayMismatch(problem)
    if (problem := pkg.finish()) is not None:
        raise ReplayMismatch(problem)
    if pkg.core is None:
        raise ReplayMismatch(f"package {package_id}: no package_created row in journal {journal.journal_id}")
    return pkg.core
