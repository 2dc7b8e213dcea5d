"""The exchange-side dead-man's switch: while some package has an entry order live on a perp market, keep
Binance's `countdownCancelAll` armed for that symbol, re-armed by a heartbeat well inside the countdown, so
that if this process dies the venue cancels the resting entries by itself; disarmed (countdown 0) once none
rest, at the time its next heartbeat would have been due (a package that starts meanwhile finds it armed:
no arm/disarm churn, each call of which costs request budget). Spot has no such switch: recovery cancels spot
entries left resting.

The venue gives the heartbeat priority over everything else in the request budget (its own share, and never
refused locally); a disarm has no such priority: if it fails, the countdown only cancels what no longer rests.

A venue without `countdown_cancel_all` (the simulated venue) has no switch: the service then does nothing.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol, runtime_checkable

import trio

from legguard.domain import VenueError
from legguard.fsm import LegExecution, LegRole, State

from ._host import EngineHost
from ._spec import DeadmanConfig

log = logging.getLogger("legguard.engine.deadman")


@runtime_checkable
class CountdownVenue(Protocol):
    """A venue with Binance's USDⓈ-M `countdownCancelAll`: cancel every open order of `symbol` unless called
    again within `countdown_ms` milliseconds; 0 disarms."""

    async def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> None: ...


class DeadMan:
    """One service task per engine (`run`), woken by `poke()` whenever a package changes state.

    Invariant: `armed` holds exactly the symbols whose countdown this engine last set to non-zero
    successfully; `_due[s]` is when `s` must be armed (again) next.
    """

    def __init__(self, engine: EngineHost, config: DeadmanConfig) -> None:
        self.engine = engine
        self.config = config
        self.armed: set[str] = set()
        self.heartbeats = 0  # successful arm calls (first arm included)
        self.failures = 0
        self._due: dict[str, float] = {}
        self._wake = trio.Event()
        self._failing: set[str] = set()  # symbols whose last call failed (journaled once per episode)

    @property
    def countdown_ms(self) -> int:
        return round(self.config.countdown * 1000)

    def supported(self) -> bool:
        return self.config.enabled and isinstance(self.engine.venue, CountdownVenue)

    def poke(self) -> None:
        """Something changed: look at the packages again now (called from synchronous engine code)."""
        self._wake.set()

    def status(self, now: float) -> dict[str, object]:
        """For `legguard status`: which symbols are armed and when each must be re-armed next."""
        return {
            "enabled": self.config.enabled,
            "supported": self.supported(),
            "armed": sorted(self.armed),
            "countdown_s": self.config.countdown,
            "next_heartbeat_in_s": {s: round(max(t - now, 0.0), 3) for s, t in sorted(self._due.items())},
            # The venue's own deadline: last successful arm + countdown (it cancels the entries then).
            "venue_cancels_in_s": {
                s: round(max(self._due[s] - self.config.heartbeat + self.config.countdown - now, 0.0), 3)
                for s in sorted(self.armed)
                if s in self._due
            },
            "heartbeats": self.heartbeats,
            "failures": self.failures,
        }

    def wanted(self) -> set[str]:
        """Perp symbols with an entry order that may rest: a package about to dispatch, or whose perp entry
        is not known to be finished."""
        out: set[str] = set()
        for h in self.engine.handles.values():
            if h.done.is_set():
                continue
            core = h.core
            if core.plan.execution(LegRole.PERP) is LegExecution.TAKER:
                continue  # the perp leg only takes (capped IOC): nothing of it ever rests
            if core.state is State.PENDING:
                out.add(core.plan.perp.symbol)
                continue
            cid = core.entry.get(LegRole.PERP)
            if cid is not None and core.orders[cid].live:
                out.add(core.plan.perp.symbol)
        return out

    async def run(self) -> None:
        if not self.config.enabled:
            return
        if not isinstance(self.engine.venue, CountdownVenue):
            log.info("venue %s has no countdownCancelAll: no dead-man's switch", self.engine.venue.name)
            return
        try:
            while True:
                await self._round()
                self._wake = trio.Event()
                due = min((self._due[s] for s in self._due), default=math.inf)
                with trio.move_on_at(due):
                    await self._wake.wait()
        finally:
            # Graceful exit: nothing rests any more (shutdown cancelled the entries); leave no timer behind.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.engine.config.deadlines.ack
                for symbol in sorted(self.armed):
                    await self._call(symbol, 0)

    async def _round(self) -> None:
        now = trio.current_time()
        wanted = self.wanted()
        calls: list[tuple[str, int]] = [(s, self.countdown_ms) for s in sorted(wanted) if self._due.get(s, now) <= now]
        calls += [(s, 0) for s in sorted((self.armed | set(self._due)) - wanted) if self._due.get(s, now) <= now]
        for symbol in wanted:
            self._due.setdefault(symbol, now)
        if not calls:
            return
        async with trio.open_nursery() as nursery:
            for symbol, ms in calls:
                nursery.start_soon(self._call, symbol, ms)

    async def _call(self, symbol: str, countdown_ms: int) -> None:
        venue = self.engine.venue
        assert isinstance(venue, CountdownVenue)
        journal, now = self.engine.journal, trio.current_time()
        try:
            with trio.fail_after(self.engine.config.deadlines.ack):
                await venue.countdown_cancel_all(symbol, countdown_ms)
        except (trio.TooSlowError, VenueError) as exc:
            self.engine.outage.suspect(exc)
            self.failures += 1
            # Retry soon; if the heartbeat keeps failing the venue cancels the resting entries, which is safe.
            if countdown_ms:
                self._due[symbol] = trio.current_time() + self.config.heartbeat / 2
            else:
                self._due.pop(symbol, None)  # an unneeded timer only cancels what no longer rests
            log.warning("dead-man's switch %s (countdown %d ms): %s", symbol, countdown_ms, exc)
            if symbol not in self._failing:
                self._failing.add(symbol)
                journal.record("engine", None, {"event": "deadman_error", "symbol": symbol,
                               "countdown_ms": countdown_ms, "error": str(exc)}, now)  # fmt: skip
            return
        self._failing.discard(symbol)
        if countdown_ms:
            self.heartbeats += 1
            self._due[symbol] = now + self.config.heartbeat
            if symbol not in self.armed:
                self.armed.add(symbol)
                journal.record("engine", None, {"event": "deadman_armed", "symbol": symbol,
                               "countdown_ms": countdown_ms}, now)  # fmt: skip
        else:
            self._due.pop(symbol, None)
            if symbol in self.armed:
                self.armed.discard(symbol)
                journal.record("engine", None, {"event": "deadman_disarmed", "symbol": symbol}, now)
