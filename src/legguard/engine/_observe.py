"""What the engine tells the world while it runs: one observer interface that metrics and alerts implement.

The engine calls every observer synchronously from its own code paths; an observer must be cheap and must
never block. An observer that raises is logged and otherwise ignored: watching the engine never stops it.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from legguard.fsm import Transitioned

    from ._handle import PackageHandle
    from ._recovery import RecoveryReport

log = logging.getLogger("legguard.engine")


class HaltSource(enum.StrEnum):
    """Who halted the engine; only a breaker halt may be resumed automatically (`breaker.resume_after`)."""

    ENGINE = "engine"  # unwind overdue, abandoned actor, unsafe recovery
    BREAKER = "breaker"
    OPERATOR = "operator"


class EngineObserver:
    """No-op base: override what you need."""

    def on_transition(self, handle: PackageHandle, t: Transitioned, now: float) -> None:
        """A package changed state."""

    def on_halt(self, reason: str, source: HaltSource) -> None:
        """The engine stopped taking new packages."""

    def on_resume(self, reason: str, automatic: bool) -> None:
        """The engine takes new packages again."""

    def on_unwind_overdue(self, package_id: str) -> None:
        """A package is still unwinding after the unwind deadline."""

    def on_kill_switch(self, seconds: float) -> None:
        """A kill switch engaged `seconds` (wall clock) after the event that broke its package arrived."""

    def on_naked(self, seconds: float) -> None:
        """A package's naked (one-leg) exposure lasted `seconds` and has ended."""

    def on_venue_health(self, healthy: bool, detail: str) -> None:
        """The venue went down (stream drop, requests failing) or came back."""

    def on_unknown_exposure(self, package_id: str, detail: str) -> None:
        """A package holds exposure whose size is unknown (an order's outcome could not be learned)."""

    def on_recovery(self, report: RecoveryReport) -> None:
        """Start-up recovery finished."""

    def on_margin(self, event: str, level: str, detail: str) -> None:
        """The margin guard: `event` "level" (its level changed to `level`: ok, warn, act), "blind" (a read of
        the perp account failed after a good one: it no longer sees the headroom) or "seeing" (it reads again)."""


def notify(observers: list[EngineObserver], method: str, *args: object) -> None:
    for observer in observers:
        try:
            getattr(observer, method)(*args)
        except Exception:
            log.exception("observer %s.%s raised (ignored)", type(observer).__name__, method)
