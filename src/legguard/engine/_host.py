"""`EngineHost`: the small interface the engine offers to the parts it runs — the package actor, recovery and
the dead-man's switch — so that none of them imports the engine back (the engine imports them). `Engine`
implements it; `EngineStats` is the counters every part reports into.
"""

from __future__ import annotations

import heapq
import itertools
import math
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

import trio

from legguard.adapters._venue import Venue
from legguard.domain import Market, RateLimited
from legguard.fsm import Event, Transitioned

from ._group import GroupCommit
from ._handle import PackageHandle, Precedence
from ._spec import EngineConfig
from .journal import Journal


@dataclass(slots=True)
class EngineStats:
    orphan_events: int = 0
    unwound: int = 0
    halts: int = 0
    stream_drops: int = 0
    faults: int = 0
    unwind_overdue: int = 0
    exits: dict[str, int] = field(default_factory=dict)  # close requests by exit policy
    closed: int = 0  # packages closed flat after a close request
    venue_mismatches: int = 0  # venue truth differed from the packages' beliefs (either direction)
    max_naked: float = 0.0
    auto_resumes: int = 0
    armed_ahead: int = 0  # orders (the kill switch's unwinds) released as armed while the cancels were in flight
    rearmed: int = 0  # armed ahead, but the cancels' answers changed them: armed again when sent
    prepared_steps: int = 0  # steps taken as decided and encoded ahead (the cancel's expected answer)
    recent: deque[tuple[float, str, str, str, str]] = field(default_factory=lambda: deque(maxlen=12))
    # (trio time, wall time, text) of the latest errors worth an operator's eyes
    errors: deque[tuple[float, float, str]] = field(default_factory=lambda: deque(maxlen=10))

    def note_naked(self, seconds: float) -> None:
        self.max_naked = max(self.max_naked, seconds)


class TimerOwner(Protocol):
    def on_timer(self) -> None: ...


class Timers:
    """One engine task that runs every package's fill deadline, instead of one sleeping trio task per
    package (~3.3 KB each: the task, its coroutine frames and the sleep's cancel scope) — every dispatched
    package holds one for seconds. An entry is a weak reference to its owner (the actor): a finished actor is
    not kept alive by its timer, and an owner that is gone is skipped. `on_timer` runs in this task and must
    not block: it posts to a mailbox or starts a task."""

    __slots__ = ("_heap", "_seq", "_wake", "running")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, weakref.ref[TimerOwner]]] = []
        self._seq = itertools.count()
        self._wake: trio.Event | None = None
        self.running = False  # until `run` starts, the actors keep their own timer tasks

    def call_at(self, when: float, owner: TimerOwner) -> None:
        """At trio time `when`, call `owner.on_timer()` if the owner still exists."""
        heapq.heappush(self._heap, (when, next(self._seq), weakref.ref(owner)))
        if self._wake is not None and self._heap[0][0] == when:
            self._wake.set()  # the new deadline is the earliest

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                now = trio.current_time()
                while self._heap and self._heap[0][0] <= now:
                    owner = heapq.heappop(self._heap)[2]()
                    if owner is not None:
                        owner.on_timer()
                self._wake = trio.Event()
                with trio.move_on_at(self._heap[0][0] if self._heap else math.inf):
                    await self._wake.wait()
                self._wake = None
        finally:
            self.running = False


class VenueHealth(Protocol):
    """Whether the venue answers (`_outage.VenueWatch`): what the parts that send requests tell and ask it."""

    @property
    def down(self) -> bool: ...

    def suspect(self, error: BaseException | str) -> None: ...

    async def wait_up(self) -> None: ...


class EngineHost(Protocol):
    """What an actor, recovery, the dead-man's switch and the venue watch may use of the engine that runs
    them."""

    venue: Venue
    cancel_on_answer: Callable[[str, bool, str, str], None] | None
    journal: Journal
    group: GroupCommit
    config: EngineConfig
    stats: EngineStats
    markets: Mapping[str, Market]
    handles: dict[str, PackageHandle]
    live: set[str]
    timers: Timers
    precedence: Precedence
    _orders: dict[str, PackageHandle]
    _packages: trio.Nursery | None

    @property
    def outage(self) -> VenueHealth: ...

    @property
    def stopping(self) -> bool: ...

    def register_order(self, client_order_id: str, handle: PackageHandle) -> None: ...

    def journal_error(self, package_id: str, client_order_id: str, where: str, error: object) -> None: ...

    def on_transition(self, handle: PackageHandle, t: Transitioned, now: float) -> None: ...

    def on_rate_limited(self, exc: RateLimited) -> None: ...

    def on_unwind_overdue(self, handle: PackageHandle) -> None: ...

    def note_error(self, text: str) -> None: ...

    def note_naked(self, seconds: float) -> None: ...

    def note_reaction(self, seconds: float) -> None: ...

    def halt(self, reason: str) -> object: ...  # the engine's also takes who halted, returns whether it did

    async def reconcile_short(self, symbol: str, prefer: PackageHandle | None = None) -> None: ...

    async def take_baseline(self, truth: Mapping[str, tuple[Decimal, Decimal]] | None = None) -> None: ...

    async def _reconcile_order(self, handle: PackageHandle, client_order_id: str, symbol: str) -> None: ...

    async def _supervise(self, handle: PackageHandle, first: Sequence[Event]) -> None: ...
