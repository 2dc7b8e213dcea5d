"""Keeping the decision path warm while the engine waits.

On a host whose caches are shared with other tenants (a cloud VM; this project's bench machine), code and
data not touched for a millisecond or two are evicted: a canonical-JSON-and-SHA-256 row costs ~90 µs after
10 ms of not running against ~5 back to back, a SQLite commit ~170 against ~25, a syscall ~12 against ~0.4
(docs/performance.md, "A cold path"). A new signal and the kill switch's decisive answer come after exactly
such a wait.

`HotPathWarmer` runs, every `EngineConfig.keep_warm` seconds, the decision core on a shadow of the latest
package — its dispatch, a partial fill of one leg, the other leg's rejection (the kill switch's decision),
the journal text of each step — built from the package's plan and dropped: nothing reaches the venue, the
journal, a package or a ledger. Measured side by side in three full benches (`legguard bench`'s "kept warm"
rows, every 1 ms): engine overhead 5-13 % lower, the kill switch's reaction 7 % and 31 % lower and once 4 %
higher, for ~28 % of one core (an idle engine: 1.6 %). Warming the journal's commit (a commit on a scratch
database) and the venue's answer decode as well was tried and measured: no gain beyond the core's, more CPU;
not kept.

Off under a virtual clock (tests, the throughput bench: no cache to keep warm in virtual time) and when
`keep_warm` is None. If a round raises, warming stops for the rest of the run, once logged: it is an
optimisation, never a reason to stop trading.
"""

from __future__ import annotations

import logging
import time

import trio
import trio.testing

from legguard.domain import OrderStatus, RejectReason
from legguard.fsm import Command, Dispatch, OrderEvent, PackageCore, PackagePlan, SendOrder

from ._host import EngineHost
from .journal._store import command_text, event_text

log = logging.getLogger("legguard.engine")


class HotPathWarmer:
    """The engine's warming task (`run`) and its counters: rounds run and the seconds they took."""

    def __init__(self, engine: EngineHost) -> None:
        self.engine = engine
        self.rounds = 0
        self.seconds = 0.0
        self.failed: str | None = None  # why warming stopped, if a round raised
        self._plan: PackagePlan | None = None  # the latest package's (kept once the package is released)

    @staticmethod
    def applies(interval: float | None) -> bool:
        """Whether warming runs here: an interval set, and the real clock (not trio's MockClock)."""
        return bool(interval) and not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)

    async def run(self) -> None:
        interval = self.engine.config.keep_warm
        if interval is None or not self.applies(interval):
            return
        while True:
            await trio.sleep(interval)
            started = time.perf_counter()
            try:
                self.decide()
            except Exception as exc:  # an optimisation that fails is switched off, never fatal
                self.failed = f"{type(exc).__name__}: {exc}"
                log.info("hot path warming turned off (%s)", self.failed)
                return
            finally:
                self.seconds += time.perf_counter() - started
            self.rounds += 1

    def decide(self) -> None:
        """The core's dispatch and the kill switch's decision on a shadow of the latest package (or of the last
        one, once released), and each step's journal text. Pure: the shadow core is built here and dropped."""
        handles = self.engine.handles
        if handles:
            self._plan = next(reversed(handles.values())).core.plan
        plan = self._plan
        if plan is None:  # no package yet: nothing to build a shadow from
            return
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
