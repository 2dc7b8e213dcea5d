"""Group commit: the journal rows of every actor step taken in one trio scheduler round commit in ONE
transaction, and no step releases an effect before that transaction has committed (write-ahead, grouped).

How a group forms: the first step to reach `GroupCommit.commit` opens a group and leads it. It yields once
(`cancel_shielded_checkpoint`: one scheduler hop, never a timer) so the other tasks of this round can append
their prepared writes to the same group; then it commits the group (one `BEGIN IMMEDIATE` ... `COMMIT`) and
wakes them. A step of the kill switch (`urgent`) does not wait for the round: it commits at once, alone or
with the group a leader is holding open (taking it over: every member's rows commit in its transaction, and
the leader only wakes the members when it resumes), so the cancel or unwind it decided leaves without the hop. A new
package's dispatch taken on the submitter's stack (`commit_now`, from `Engine.submit`) commits the same way.

Failure and cancellation: the writes are validated and encoded by each step before it joins (a malformed step
fails alone); a failed commit rolls the whole group back, and every member raises, so no member swaps in its
decided core nor releases anything: every core stays where the journal is. Waiting for the commit is shielded
from cancellation: it lasts one scheduler round at most, and a step cancelled there would otherwise have rows
committed for effects it never releases (or release effects it has not committed); the cancellation is
delivered at the step's next checkpoint, after it released what it committed, exactly as before grouping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from . import _crashpoints
from ._crashpoints import ARMED as CRASH_ARMED
from .journal import Journal, JournalError

Write = Callable[[], None]

# Bound once, so a member's join and wake skip the `trio.lowlevel` attribute look-ups (small, but paid by
# every step of every group).
_current_task = trio.lowlevel.current_task
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_reschedule = trio.lowlevel.reschedule


class GroupCommitFailed(JournalError):
    """The transaction of a group this step belonged to did not commit; nothing of the group was written."""


class _Group:
    __slots__ = ("committed", "error", "members", "waiters", "writes")

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.members = 1
        self.waiters: list[trio.lowlevel.Task] = []
        self.error: BaseException | None = None
        self.committed = False  # by an urgent step that took the group over while its leader yielded


def _uncancellable(_: object) -> trio.lowlevel.Abort:
    # A member waiting for its group's commit cannot be cancelled there: the leader commits within this
    # round and then reschedules it; the cancellation is delivered at its next checkpoint. (The same as a
    # shielded `Event.wait()`, without a cancel scope per step.)
    return trio.lowlevel.Abort.FAILED


class GroupCommit:
    """One per engine (one journal writer): `await commit(writes)` returns once `writes` are durable, in a
    transaction shared with the other steps of the same scheduler round."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._open: _Group | None = None
        self.groups = 0  # transactions committed
        self.members = 0  # steps committed in them (members / groups = the mean group size)
        self.largest = 0

    async def commit(self, writes: Sequence[Write], *, urgent: bool = False) -> None:
        group = self._open
        if urgent:
            self._commit_urgent(writes, group)
            return
        if group is not None:  # a leader is yielding: join its transaction and wait for it
            group.writes.extend(writes)
            group.members += 1
            group.waiters.append(_current_task())
            await _wait_task_rescheduled(_uncancellable)
            if group.error is not None:
                raise GroupCommitFailed(
                    f"journal {self.journal.journal_id}: the group commit of {group.members} steps failed "
                    f"({type(group.error).__name__}: {group.error}); none of its rows was written"
                )
            return
        group = _Group()
        group.writes.extend(writes)
        # Let the rest of this round append (trio cannot say whether any is left: the statistics count only
        # the next round's tasks). Shielded, so this hop never raises; no timer, so a lone step waits one
        # scheduler pass at most (the kill switch's does not wait at all: `urgent`).
        self._open = group
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            if self._open is group:
                self._open = None
        if group.committed:  # an urgent step committed this group meanwhile (or failed to, for all of it)
            for task in group.waiters:
                _reschedule(task)
            if group.error is not None:
                raise GroupCommitFailed(
                    f"journal {self.journal.journal_id}: the group commit of {group.members} steps failed "
                    f"({type(group.error).__name__}: {group.error}); none of its rows was written"
                )
            return
        try:
            self.journal.commit(group.writes)
        except BaseException as exc:
            group.error = exc
            raise
        finally:
            for task in group.waiters:  # they run only after this task's next checkpoint
                _reschedule(task)
        self.groups += 1
        self.members += group.members
        self.largest = max(self.largest, group.members)
        if CRASH_ARMED:
            # Committed, and not one effect of any member released yet.
            _crashpoints.reached("group_committed")

    def commit_now(self, writes: Sequence[Write]) -> None:
        """Commit `writes` now, synchronously, as an urgent step does (alone, or taking over the open group) but
        from any caller's stack: a new package's dispatch taken by `Engine.submit`. The journal's housekeeping
        is not deferred for it (a burst of submits commits one transaction each). Refused inside the caller's
        open `journal.batch()`: the rows would be durable only when that batch commits, after the release."""
        if self.journal.in_batch:
            raise JournalError(f"journal {self.journal.journal_id}: a step committed now, inside an open batch")
        self._commit_urgent(writes, self._open, urgent=False)

    def _commit_urgent(self, writes: Sequence[Write], group: _Group | None, *, urgent: bool = True) -> None:
        """Commit now, without waiting for the round: `writes` alone, or with the open group (whose leader then
        finds it committed and wakes its members). Synchronous: no checkpoint between decision and commit."""
        if group is None:
            group = _Group()
        else:
            self._open = None
            group.members += 1
            group.committed = True
        group.writes.extend(writes)
        try:
            self.journal.commit(group.writes, urgent=urgent)
        except BaseException as exc:
            group.error = exc
            raise
        self.groups += 1
        self.members += group.members
        self.largest = max(self.largest, group.members)
        if CRASH_ARMED:
            _crashpoints.reached("group_committed")
