"""Venue outages: notice when the venue stops answering, stop new packages while it does, and when it answers
again reconcile every live order and position before anything new is opened.

Any engine task whose request the venue left unanswered (connection refused, 5xx, timeout, a dropped stream)
calls `suspect()`. One unanswered request is not an outage: the watch then probes the venue once (a signed
read of both markets' balances) and declares it down only if that goes unanswered too. While down it keeps
probing with exponential back-off; package actors stop sending (their deadlines and queries wait for the
venue, `wait_up()`), so each package keeps the state it had. On the first answer the watch asks the venue
about every order still live in some package and about every perp position that packages hold, waits for
those answers, and only then accepts new packages again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import trio

from legguard.domain import MalformedResponse, OutcomeUnknown, RateLimited, StreamDisconnected, VenueError

if TYPE_CHECKING:
    from ._host import EngineHost

log = logging.getLogger("legguard.engine.outage")

FIRST_RETRY = 0.25  # seconds before the first probe after a failed one; doubles up to MAX_RETRY
MAX_RETRY = 5.0
# How long a request that has to succeed before anything trades (a book's first snapshot, recovery's
# queries) waits, in all, for the request budget to refill.
RATE_LIMIT_WAIT = 30.0

T = TypeVar("T")


async def waiting_out_rate_limits(call: Callable[[], Awaitable[T]], what: str, limit: float = RATE_LIMIT_WAIT) -> T:
    """`await call()`, a rate-limit refusal (`RateLimited`: the local request budget, or the venue's 429)
    waited out as long as it says, `limit` seconds in all, then raised. For the requests that must succeed
    before anything trades: a restart with many packages to recover spends the budget on their queries, and
    the next request would otherwise fail the start (or skip a safety check)."""
    give_up = trio.current_time() + limit
    while True:
        try:
            return await call()
        except RateLimited as exc:
            pause = max(exc.retry_after, 0.001)
            if trio.current_time() + pause > give_up:
                raise
            log.info("%s waits %.2f s for the request budget (%s)", what, pause, exc)
            await trio.sleep(pause)


def unanswered(exc: BaseException) -> bool:
    """True for a failure that says nothing about the request except that the venue did not answer it."""
    return isinstance(exc, OutcomeUnknown | MalformedResponse | StreamDisconnected | trio.TooSlowError)


class VenueWatch:
    """One service task per engine (`run`).

    Invariant: `down_since` is None exactly when the last probe (or the last request) was answered; while it
    is set, `_up` is an unset event that `came_back` sets.
    """

    def __init__(self, engine: EngineHost) -> None:
        self.engine = engine
        self.down_since: float | None = None
        self.outages = 0
        self.probes = 0
        self.last_error = ""
        self.downtime = 0.0  # seconds down, over finished outages
        self._suspect = trio.Event()
        self._up = trio.Event()
        self._up.set()
        self._down = trio.Event()  # set while down (a fresh one once the venue is back)
        self.on_change: Callable[[bool, str], None] | None = None  # (up?, detail): the engine's observers

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def suspect(self, error: BaseException | str) -> None:
        """A request went unanswered: have the venue probed (cheap to call from anywhere, any number of
        times). Definite answers (rejections, not found, rate limits) are not outages and are ignored."""
        if isinstance(error, BaseException) and not unanswered(error):
            return
        self.last_error = str(error) or type(error).__name__
        self._suspect.set()

    async def wait_up(self) -> None:
        """Return at once if the venue answers, else when it answers again and has been reconciled."""
        await self._up.wait()

    async def wait_down(self) -> None:
        """Return once the venue is declared down (observers and tests)."""
        await self._down.wait()

    async def run(self) -> None:
        while True:
            await self._suspect.wait()
            self._suspect = trio.Event()
            if await self._probe():
                continue
            self._went_down()
            retry = FIRST_RETRY
            while True:
                await trio.sleep(retry)
                retry = min(retry * 2, MAX_RETRY)
                if await self._probe():
                    break
            await self._came_back()

    async def _probe(self) -> bool:
        self.probes += 1
        try:
            with trio.fail_after(self.engine.config.deadlines.ack):
                await self.engine.venue.fetch_balance()
        except (trio.TooSlowError, VenueError) as exc:
            if not unanswered(exc):
                return True  # it answered, if only to refuse
            self.last_error = str(exc) or type(exc).__name__
            return False
        return True

    def _went_down(self) -> None:
        now = trio.current_time()
        self.down_since = now
        self.outages += 1
        self._up = trio.Event()
        self._down.set()
        live = sorted(self.engine.live)
        log.error("venue %s unreachable: %s; no new packages, %d live package(s) kept as they are, retrying",
                  self.engine.venue.name, self.last_error, len(live))  # fmt: skip
        self.engine.journal.record("engine", None, {"event": "venue_down", "error": self.last_error, "live": live},
                                   now)  # fmt: skip
        if self.on_change is not None:
            self.on_change(False, self.last_error)

    async def _came_back(self) -> None:
        """Reconcile, then accept new packages again. The orders first: a fill missed while down reaches its
        package before the position check compares what packages hold with the venue."""
        engine = self.engine
        assert self.down_since is not None
        down_for = trio.current_time() - self.down_since
        log.warning("venue %s answers again after %.1fs: reconciling", engine.venue.name, down_for)
        async with trio.open_nursery() as nursery:
            for handle in list(engine.handles.values()):
                if handle.done.is_set():
                    continue
                for facts in handle.core.open_orders():
                    nursery.start_soon(engine._reconcile_order, handle, facts.intent.client_order_id,
                                       facts.intent.symbol)  # fmt: skip
        for symbol in sorted({h.core.plan.perp.symbol for h in engine.handles.values() if not h.done.is_set()}):
            await engine.reconcile_short(symbol)
        self.downtime += down_for
        self.down_since = None
        self._down = trio.Event()
        self._up.set()
        engine.journal.record("engine", None, {"event": "venue_up", "down_seconds": round(down_for, 3)},
                              trio.current_time())  # fmt: skip
        if self.on_change is not None:
            self.on_change(True, f"answers again after {down_for:.1f}s; live orders and positions reconciled")
