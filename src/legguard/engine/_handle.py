"""`PackageHandle`: what outlives any one incarnation of a package's actor — its mailbox, its event log (to
rebuild the core after a fault) and the timing facts the engine reports. The engine, the actor, recovery and
the dead-man's switch all hold handles; the handle knows none of them.

`Precedence` is the engine-wide rule that the kill switch's events go first: an order event for a package that
is naked, orphaned or unwinding is urgent. It jumps its package's mailbox (the urgent lane), and other work on
the engine thread (book updates, new packages' dispatch, other packages' routine events) defers to urgent
events already queued, each unit of it at most `PRECEDENCE_WAIT`: kill-switch bursts go first, nothing else
starves.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Coroutine, KeysView
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import outcome
import trio
import trio.lowlevel

from legguard.domain import OrderUpdate
from legguard.fsm import Event, OrderEvent, PackageCore, State

# The longest one unit of routine work (a book update, a new package's dispatch, a routine event of another
# package) waits for urgent kill-switch events queued before it. Urgent events are handled in microseconds to
# a few milliseconds each; the bound keeps a long burst of them from starving everything else.
PRECEDENCE_WAIT = 0.005

_URGENT_STATES = frozenset({State.ORPHANED, State.UNWINDING})


@dataclass(frozen=True, slots=True)
class _Wake(Event):
    """Sent through the mailbox channel when an urgent event is queued, to wake an actor waiting on it; never
    stepped, never journaled."""


WAKE = _Wake()


class Precedence:
    """Counts urgent events posted and not yet taken by their actors (engine-wide), and lets routine work defer
    to them: `defer` returns once none is pending, when `wake` is set (its own urgent event arrived), or after
    `limit` seconds, whichever comes first."""

    def __init__(self) -> None:
        self.pending = 0
        self._waiting: set[trio.Event] = set()

    def add(self) -> None:
        self.pending += 1

    def done(self, count: int = 1) -> None:
        self.pending -= count
        if self.pending <= 0:
            self.pending = 0
            for waiter in self._waiting:
                waiter.set()
            self._waiting.clear()

    async def defer(self, wake: trio.Event | None = None, limit: float = PRECEDENCE_WAIT) -> None:
        if not self.pending:
            return
        wake = wake if wake is not None else trio.Event()
        self._waiting.add(wake)
        try:
            with trio.move_on_after(limit):
                await wake.wait()
        finally:
            self._waiting.discard(wake)


class Mailbox:
    """A package's unbounded mailbox: many posters, one receiver (its actor). What trio's memory channel
    did for it (`send_nowait` never blocks and works from a cancelled task; `receive` is a checkpoint;
    closing ends it), in ~100 bytes instead of ~1.7 KB per package (the channel state, its deque, both ends'
    task sets) plus ~250 bytes while the actor waits."""

    __slots__ = ("_closed", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Event] | None = None  # made by the first event that finds no receiver waiting
        self._waiter: trio.lowlevel.Task | None = None
        self._closed = False

    def send_nowait(self, event: Event) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the package's mailbox is closed")
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter, outcome.Value(event))
        elif self._items is None:
            self._items = [event]
        else:
            self._items.append(event)

    def receive(self) -> Coroutine[Any, Any, Event]:
        """`await mailbox.receive()`: the next event; a checkpoint either way. Not a coroutine itself: an actor
        waits here for most of its life, and returning trio's wait directly keeps one coroutine frame
        (~280 bytes per live package) off that wait."""
        if self._items:
            return self._take()
        if self._closed:
            return self._ended()
        if self._waiter is not None:
            raise trio.BusyResourceError("one receiver per mailbox: the package's actor")
        # A cancellation already pending is delivered by the wait itself (its abort clears the waiter).
        self._waiter = trio.lowlevel.current_task()
        return trio.lowlevel.wait_task_rescheduled(self._abort)  # noqa: ASYNC105 (awaited by the caller: no frame)

    async def _take(self) -> Event:
        await trio.lowlevel.checkpoint_if_cancelled()
        assert self._items
        event = self._items.pop(0)
        if not self._items:
            self._items = None
        await trio.lowlevel.cancel_shielded_checkpoint()
        return event

    async def _ended(self) -> Event:
        await trio.lowlevel.checkpoint_if_cancelled()
        raise trio.EndOfChannel

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._waiter = None  # the receiver was cancelled while waiting
        return trio.lowlevel.Abort.SUCCEEDED

    def close(self) -> None:
        """No more events: a waiting receiver (there is none once the actor is gone) ends."""
        self._closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter, outcome.Error(trio.EndOfChannel()))


class Done:
    """Whether a package's actor is finished for good: `trio.Event`'s interface, with the trio event (and its
    task set, ~270 bytes) made only when someone waits; the engine asks `is_set()` far more often."""

    __slots__ = ("_event", "_flag")

    def __init__(self) -> None:
        self._flag = False
        self._event: trio.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._event is None:
            self._event = trio.Event()
            if self._flag:
                self._event.set()
        await self._event.wait()


@dataclass(slots=True)
class PackageHandle:
    """What outlives any one actor incarnation: the mailbox, the event log for rebuilding the core after a
    fault, and the timing facts the engine reports."""

    package_id: str
    core: PackageCore
    # One `Mailbox`; its two ends keep the names trio's memory channel gave them.
    send: Mailbox
    receive: Mailbox
    events: list[Event] = field(default_factory=list)
    created_at: float = 0.0
    naked_since: float | None = None
    max_naked: float = 0.0
    unwinding_since: float | None = None
    ever_orphaned: bool = False
    faults: int = 0
    leg_timer_started: bool = False
    exit_leg_timer_started: bool = False  # the passive exit's leg deadline runs (one side closed, the other not)
    hedged_at: float | None = None  # when the package became hedged (exit policy: maximum holding time)
    exit_policy: str | None = None  # what closed the package (basis, max_hold, loss_limit, margin_guard, operator)
    sent_at: dict[str, float] = field(default_factory=dict)  # client id -> when its request was released
    funding: Decimal = Decimal(0)  # funding payments attributed to this package (quote, signed)
    reductions_posted: Decimal = Decimal(0)  # venue reductions sent to the mailbox (applied or not yet)
    crash_on_event: int | None = None  # fault injection: the actor raises after its Nth event
    # Audited facts of venue answers (`ack`, `order_error`) waiting to be journaled in the same transaction as
    # the step that acts on them: one commit less between an answer and the kill switch. An `ack` holds the
    # venue's update itself: its payload is made when it is journaled, not on the way to the step.
    facts: list[tuple[str, dict[str, object] | OrderUpdate, float]] = field(default_factory=list)
    # The urgent lane: order events that arrived while the package was naked, orphaned or unwinding, taken
    # before anything in the channel (`take_urgent`). None until first used.
    urgent: deque[Event] | None = None
    precedence: Precedence | None = None  # the engine's; None: no engine-wide precedence (tests, tools)
    waker: trio.Event | None = None  # set by an urgent post while the actor defers to other packages' urgent work
    held: Event | None = None  # a routine event taken from the channel, stepped after the urgent lane is empty
    done: Done = field(default_factory=Done)
    # Set after the next step, made only when an observer waits (`wait_until`): most packages never have one.
    stepped: trio.Event | None = None

    @classmethod
    def create(cls, core: PackageCore, now: float, precedence: Precedence | None = None) -> PackageHandle:
        # Unbounded: posting must never block (and must work from a cancelled task, via send_nowait).
        mailbox = Mailbox()
        return cls(core.plan.package_id, core, mailbox, mailbox, created_at=now, precedence=precedence)

    @property
    def released(self) -> KeysView[str]:
        """Client ids handed to the venue (not just journaled): those with a release time."""
        return self.sent_at.keys()

    def is_urgent(self) -> bool:
        """Whether this package's order events go first: it is orphaned or unwinding (the kill switch), or
        naked (one leg filled more than the other: the next answer may be the one that decides)."""
        return self.naked_since is not None or self.core.state in _URGENT_STATES

    def take_urgent(self) -> Event | None:
        if not self.urgent:
            return None
        if self.precedence is not None:
            self.precedence.done()
        return self.urgent.popleft()

    def drop_urgent(self) -> None:
        """The actor is gone for good: what is left in the urgent lane will never be taken."""
        if self.urgent:
            if self.precedence is not None:
                self.precedence.done(len(self.urgent))
            self.urgent.clear()

    def pulse(self) -> None:
        stepped, self.stepped = self.stepped, None
        if stepped is not None:
            stepped.set()

    async def wait_until(self, predicate: Callable[[PackageCore], bool]) -> None:
        """Wait until `predicate(core)` holds (checked after every step) or the package is done."""
        while not predicate(self.core):
            if self.done.is_set():
                return
            if self.stepped is None:
                self.stepped = trio.Event()
            stepped, done = self.stepped, self.done
            async with trio.open_nursery() as nursery:

                async def first(ev: trio.Event | Done) -> None:
                    await ev.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first, stepped)
                nursery.start_soon(first, done)

    def post(self, event: Event) -> None:
        if isinstance(event, OrderEvent) and not self.done.is_set() and self.is_urgent():
            if self.urgent is None:
                self.urgent = deque()
            self.urgent.append(event)
            if self.precedence is not None:
                self.precedence.add()
            if self.waker is not None:
                self.waker.set()
            event = WAKE  # wakes the actor if it waits on the channel; the event itself waits in the lane
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):  # package finished
            self.send.send_nowait(event)
