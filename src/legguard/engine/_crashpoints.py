"""Crash points for the crash harness: named places where the process kills itself with a real SIGKILL (no
cleanup, no flush, no `finally`) when `LEGGUARD_CRASH_AT=name[:n]` names them, at their n-th passage (default 1).

The variable is read once, at import. Call sites guard every hook with the module constant
(`if CRASH_ARMED: ...`), so an unset variable costs one global lookup per passage and nothing else.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

from legguard.domain import OrderStatus
from legguard.fsm import (
    Command,
    JournalIntent,
    LegRole,
    OrderIntent,
    PackageCore,
    Purpose,
    State,
    Transitioned,
    Trigger,
)

ENV: Final = "LEGGUARD_CRASH_AT"

# name -> where it is (the harness and `--help` texts quote these)
POINTS: Final[dict[str, str]] = {
    "after_intent": "order intents journaled, nothing sent yet",
    "group_committed": "a group commit (the steps of one scheduler round) committed, no effect of it released",
    "after_send": "an order request answered by the venue, the answer not yet processed or journaled",
    "cancel_on_answer": "a cancel armed for an answer written as that answer was read, the answer not yet stepped",
    "one_leg_filled": "one entry leg (partly) filled while the other rests unfilled",
    "one_leg_rejected": "one entry leg filled, the other rejected: leg_broken journaled, no unwind order sent",
    "mid_unwind": "an unwind order accepted by the venue, its answer not yet processed",
    "mid_exit": "a passive exit limit accepted by the venue, its answer not yet processed (the exit rests)",
    "hedged": "the package's transition to hedged journaled",
    "during_recovery": "recovery has queried the venue for a package, before resuming it",
}


class CrashPointError(ValueError):
    """`LEGGUARD_CRASH_AT` does not name a crash point."""


def parse(text: str) -> tuple[str, int] | None:
    """`name` or `name:n` -> (name, n); empty -> None. Raises CrashPointError naming the value."""
    text = text.strip()
    if not text:
        return None
    name, _, count = text.partition(":")
    if name not in POINTS:
        raise CrashPointError(f"{ENV}: {text!r} names no crash point; allowed: {', '.join(POINTS)} (optionally :N)")
    if not count:
        return name, 1
    if not count.isdigit() or int(count) < 1:
        raise CrashPointError(f"{ENV}: {text!r}: the count after ':' must be an integer >= 1")
    return name, int(count)


# `LEGGUARD_DURABLE_AT=name[:n]`: at that passage the process copies its journal, as committed, to
# `<journal>.durable` and carries on. The crash harness then puts the copy back after the SIGKILL: the commits
# made after it are lost, as a power loss loses them under `durability = "process"`.
DURABLE_ENV: Final = "LEGGUARD_DURABLE_AT"
_TARGET: Final = parse(os.environ.get(ENV, ""))
_DURABLE: Final = parse(os.environ.get(DURABLE_ENV, ""))
ARMED: Final = _TARGET is not None or _DURABLE is not None
_passed = 0
_durable_passed = 0


class _Backup(Protocol):
    path: Path

    def backup_to(self, path: str | Path) -> None: ...


def durable_point(name: str, journal: _Backup | None) -> None:
    """The process passes `name`: copy the journal if `LEGGUARD_DURABLE_AT` names this passage."""
    global _durable_passed
    if _DURABLE is None or _DURABLE[0] != name or journal is None:
        return
    _durable_passed += 1
    if _durable_passed == _DURABLE[1]:
        target = Path(f"{journal.path}.durable")
        target.unlink(missing_ok=True)
        journal.backup_to(target)
        os.write(2, f"legguard: durable point {name}:{_durable_passed}: journal copied to {target}\n".encode())


def reached(name: str) -> None:
    """The process passes crash point `name`: SIGKILL itself if this is the targeted passage."""
    global _passed
    if _TARGET is None or _TARGET[0] != name:
        return
    _passed += 1
    if _passed < _TARGET[1]:
        return
    # Unbuffered, so the harness can tell which point fired; then no cleanup of any kind.
    os.write(2, f"legguard: crash point {name}:{_passed} reached, SIGKILL\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


def after_step(core: PackageCore, commands: Sequence[Command], journal: _Backup | None = None) -> None:
    """The points that follow one journaled core step, before any of its effects start."""
    if any(isinstance(c, JournalIntent) for c in commands):
        durable_point("after_intent", journal)
        reached("after_intent")
    for c in commands:
        if isinstance(c, Transitioned):
            if c.dest is State.HEDGED:
                reached("hedged")
            elif c.trigger is Trigger.LEG_BROKEN and _filled_and_rejected(core):
                reached("one_leg_rejected")
    if core.state is State.DISPATCHED and _one_filled_other_resting(core):
        reached("one_leg_filled")


def after_send(intent: OrderIntent) -> None:
    """The venue answered an order request; the answer is not processed yet."""
    reached("after_send")
    _answered(intent)


def cancel_on_answer() -> None:
    """A cancel armed for an answer (`cancel_armed`) left as the venue read that answer; the answer is not
    processed or journaled yet."""
    reached("cancel_on_answer")


def stream_answered(intent: OrderIntent) -> None:
    """The order stream reported on an order; the report is not processed yet. For a market unwind this is
    often the first answer the engine sees: the venue's fill report can overtake the request's own answer,
    and once the package is flat its request task is cancelled, so `after_send` is never passed."""
    _answered(intent)


def _answered(intent: OrderIntent) -> None:
    if intent.purpose is Purpose.UNWIND:
        reached("mid_unwind")
    elif intent.purpose is Purpose.EXIT:
        reached("mid_exit")


def _entries(core: PackageCore) -> list[tuple[OrderStatus, bool]]:
    out = []
    for role in (LegRole.SPOT, LegRole.PERP):
        cid = core.entry.get(role)
        if cid is not None:
            facts = core.orders[cid]
            out.append((facts.status, facts.filled > 0))
    return out


def _filled_and_rejected(core: PackageCore) -> bool:
    entries = _entries(core)
    return any(filled for _, filled in entries) and any(status is OrderStatus.REJECTED for status, _ in entries)


def _one_filled_other_resting(core: PackageCore) -> bool:
    entries = _entries(core)
    return len(entries) == 2 and any(
        a_filled and b_status is OrderStatus.OPEN and not b_filled
        for (_, a_filled), (b_status, b_filled) in (entries, entries[::-1])
    )
