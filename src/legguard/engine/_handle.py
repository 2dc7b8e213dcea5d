"""`PackageHandle`: what outlives any one incarnation of a package's actor — its mailbox, its event log (to
rebuild the core after a fault) and the timing facts the engine reports. The engine, the actor, recovery and
the dead-man's switch all hold handles; the handle knows none of them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import trio

from legguard.fsm import Event, PackageCore


@dataclass(slots=True)
class PackageHandle:
    """What outlives any one actor incarnation: the mailbox, the event log for rebuilding the core after a
    fault, and the timing facts the engine reports."""

    package_id: str
    core: PackageCore
    send: trio.MemorySendChannel[Event]
    receive: trio.MemoryReceiveChannel[Event]
    events: list[Event] = field(default_factory=list)
    created_at: float = 0.0
    naked_since: float | None = None
    max_naked: float = 0.0
    unwinding_since: float | None = None
    ever_orphaned: bool = False
    faults: int = 0
    leg_timer_started: bool = False
    released: set[str] = field(default_factory=set)  # client ids handed to the venue (not just journaled)
    sent_at: dict[str, float] = field(default_factory=dict)  # client id -> when its request was released
    funding: Decimal = Decimal(0)  # funding payments attributed to this package (quote, signed)
    reductions_posted: Decimal = Decimal(0)  # venue reductions sent to the mailbox (applied or not yet)
    crash_on_event: int | None = None  # fault injection: the actor raises after its Nth event
    # Audited facts of venue answers (`ack`, `order_error`) waiting to be journaled in the same transaction as
    # the step that acts on them: one commit less between an answer and the kill switch.
    facts: list[tuple[str, dict[str, object], float]] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)
    stepped: trio.Event = field(default_factory=trio.Event)  # pulsed after every step (observers wait on it)

    @classmethod
    def create(cls, core: PackageCore, now: float) -> PackageHandle:
        # Unbounded: posting must never block (and must work from a cancelled task, via send_nowait).
        send, receive = trio.open_memory_channel[Event](math.inf)
        return cls(core.plan.package_id, core, send, receive, created_at=now)

    def pulse(self) -> None:
        self.stepped.set()
        self.stepped = trio.Event()

    async def wait_until(self, predicate: Callable[[PackageCore], bool]) -> None:
        """Wait until `predicate(core)` holds (checked after every step) or the package is done."""
        while not predicate(self.core):
            if self.done.is_set():
                return
            stepped, done = self.stepped, self.done
            async with trio.open_nursery() as nursery:

                async def first(ev: trio.Event) -> None:
                    await ev.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first, stepped)
                nursery.start_soon(first, done)

    def post(self, event: Event) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):  # package finished
            self.send.send_nowait(event)
