"""Keeping the hot path warm while the engine waits.

On a host whose caches are shared with other tenants (a cloud VM; this project's bench machine), code and
data not touched for a few milliseconds are evicted: a SQLite commit after ~10 ms of not committing costs
~170 µs against ~25 µs back to back, a syscall ~12 µs against ~0.4, a canonical-JSON-and-SHA-256 row ~90 µs
against ~5 (docs/performance.md, "A cold path"). The kill switch's decisive answer and the next signal come
after exactly such a wait, so they would pay the eviction on the path that matters.

`HotPathWarmer` runs, every `EngineConfig.keep_warm` seconds, what those paths run, on nothing real:
- the journal's commit path (`Journal.warm`: the chain's hash, a read of the last row, a commit on a scratch
  database beside the journal);
- the decision core on a shadow package built from the latest plan (dispatch, a partial fill, the other leg's
  rejection: the kill switch's decision) and the journal text of each step;
- the venue's answer decode (`warm()`, if the venue has one: `CcxtVenue` decodes a canned order answer).

Nothing it does reaches the venue, the journal's rows, a package or a ledger. Each piece ends at a trio
checkpoint, so an answer read meanwhile waits at most one piece (tens of µs). Off under a virtual clock
(tests, the throughput bench: there is no cache to keep warm in virtual time) and when `keep_warm` is None.
A piece that raises is turned off for the rest of the run, once logged: warming is never a reason to stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio
import trio.testing

from legguard.domain import OrderStatus, RejectReason
from legguard.fsm import Command, Dispatch, OrderEvent, PackageCore, PackagePlan, SendOrder

from ._host import EngineHost
from .journal._store import command_text, event_text

log = logging.getLogger("legguard.engine")


class HotPathWarmer:
    """The engine's warming task (`run`) and its counters: rounds run and the CPU seconds they took."""

    def __init__(self, engine: EngineHost) -> None:
        self.engine = engine
        self.rounds = 0
        self.seconds = 0.0
        self._off: set[str] = set()  # pieces turned off after raising

    @staticmethod
    def applies(interval: float | None) -> bool:
        """Whether warming runs here: an interval set, and the real clock (not trio's MockClock)."""
        return bool(interval) and not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)

    async def run(self) -> None:
        interval = self.engine.config.keep_warm
        if interval is None or not self.applies(interval):
            return
        venue_warm: Callable[[], None] | None = getattr(self.engine.venue, "warm", None)
        pieces: list[tuple[str, Callable[[], None]]] = [("journal", self.engine.journal.warm), ("core", self.decide)]
        if venue_warm is not None:
            pieces.append(("venue", venue_warm))
        while True:
            await trio.sleep(interval)
            for name, piece in pieces:
                if name in self._off:
                    continue
                started = time.perf_counter()
                try:
                    piece()
                except Exception as exc:  # an optimisation that fails is switched off, never fatal
                    self._off.add(name)
                    log.info("hot path warming: %s turned off (%s: %s)", name, type(exc).__name__, exc)
                self.seconds += time.perf_counter() - started
                await trio.lowlevel.checkpoint()  # an answer read meanwhile goes first
            self.rounds += 1

    def decide(self) -> None:
        """The core's dispatch and the kill switch's decision on a shadow of the latest package, and each
        step's journal text. Pure: the shadow core is built here and dropped; nothing is journaled."""
        handles = self.engine.handles
        if not handles:
            return
        plan: PackagePlan = next(reversed(handles.values())).core.plan
        core = PackageCore(plan)
        dispatch = Dispatch()
        commands = core.handle(dispatch)
        _texts(dispatch, commands)
        sends = [c.intent for c in commands if type(c) is SendOrder]
        if len(sends) != 2:  # (a maker-taker package sends its maker leg alone)
            return
        first, second = sends
        twin = core.clone()
        ack = OrderEvent(first.client_order_id, OrderStatus.OPEN, filled=first.amount / 2, average=first.price)
        commands = twin.handle(ack)
        twin.fingerprint()
        _texts(ack, commands)
        twin.exposure()
        orphaned = twin.clone()
        rejected = OrderEvent(second.client_order_id, OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS)
        _texts(rejected, orphaned.handle(rejected))
        orphaned.exposure()
        orphaned.provisional_sends()


def _texts(event: OrderEvent | Dispatch, commands: list[Command]) -> None:
    event_text(event)
    for command in commands:
        command_text(command)


__all__ = ["HotPathWarmer"]
