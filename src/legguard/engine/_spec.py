"""What a user asks for (a package spec) and how the engine behaves (deadlines, risk limits, breaker).

Everything is validated here, at the edge, with errors that name the field, the value and what is allowed,
before anything is journaled or sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from legguard.domain import Market, MarketKind, Side
from legguard.fsm import ExecutionStyle, LegRole, OrphanPolicy


class SpecError(ValueError):
    """A package spec or configuration value is invalid. `field` names the offending key."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: {value!r} is invalid; {allowed}")


def to_decimal(field_name: str, value: object) -> Decimal:
    if isinstance(value, bool):
        raise SpecError(field_name, value, "expected a number")
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise SpecError(field_name, value, "expected a number") from exc
    if not d.is_finite():
        raise SpecError(field_name, value, "must be a finite number (not NaN or infinity)")
    return d


def positive_seconds(field_name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(field_name, value, "expected a number of seconds")
    f = float(value)
    if not math.isfinite(f) or f <= 0:
        raise SpecError(field_name, value, "must be a finite number of seconds > 0")
    return f


@dataclass(frozen=True, slots=True)
class Deadlines:
    ack: float = 2.0  # per-leg acknowledgement; past it the leg's status is unknown
    fill: float = 5.0  # resting post-only entries; past it both are cancelled and fills decide
    unwind: float = 10.0  # kill switch; past it the engine halts new packages and alerts (and keeps trying)
    leg: float = 1.0  # once one leg has filled more than the other, the other gets this long to catch up

    def __post_init__(self) -> None:
        for name in ("ack", "fill", "unwind", "leg"):
            positive_seconds(f"deadlines.{name}", getattr(self, name))


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """More than `max_orphans` orphan events within `window` seconds halts new packages. With `resume_after`
    the engine resumes by itself after that cool-off; a second trip within `window` of such an automatic
    resume stays halted until an operator resumes."""

    max_orphans: int = 5
    window: float = 30.0
    resume_after: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_orphans, bool) or not isinstance(self.max_orphans, int) or self.max_orphans < 1:
            raise SpecError("breaker.max_orphans", self.max_orphans, "must be an integer >= 1")
        positive_seconds("breaker.window", self.window)
        if self.resume_after is not None:
            positive_seconds("breaker.resume_after", self.resume_after)


@dataclass(frozen=True, slots=True)
class DeadmanConfig:
    """The perp venue's dead-man's switch (`countdownCancelAll`) while entries rest: armed for `countdown`
    seconds, re-armed every `heartbeat` seconds."""

    enabled: bool = True
    countdown: float = 10.0
    heartbeat: float = 2.5

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise SpecError("deadman.enabled", self.enabled, "expected true or false")
        positive_seconds("deadman.countdown", self.countdown)
        positive_seconds("deadman.heartbeat", self.heartbeat)
        if self.heartbeat * 2 > self.countdown:
            raise SpecError("deadman.heartbeat", self.heartbeat,
                            f"must be at most half of deadman.countdown ({self.countdown:g} s), so that one late "
                            "heartbeat never lets the countdown expire")  # fmt: skip


@dataclass(frozen=True, slots=True)
class EngineConfig:
    deadlines: Deadlines = field(default_factory=Deadlines)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    deadman: DeadmanConfig = field(default_factory=DeadmanConfig)
    policy: OrphanPolicy = OrphanPolicy.FLATTEN
    min_spread: Decimal = Decimal(0)  # guaranteed spread after maker fees, fraction
    max_book_age: float = 2.0  # seconds; older books are stale and packages are refused
    max_live_packages: int = 50  # risk: packages not yet hedged or flat at once
    max_notional: Decimal = Decimal(1_000_000)  # risk: per-package spot notional cap (quote)
    reconcile_interval: float = 5.0  # seconds between perp position reconciliations against the venue


@dataclass(frozen=True, slots=True)
class PackageSpec:
    """One package as asked for: buy `quantity` on `spot_symbol`, sell it short on `perp_symbol`."""

    spot_symbol: str
    perp_symbol: str
    quantity: Decimal
    spot_side: Side = Side.BUY
    perp_side: Side = Side.SELL
    min_spread: Decimal | None = None  # overrides EngineConfig.min_spread
    policy: OrphanPolicy | None = None  # overrides EngineConfig.policy
    execution: ExecutionStyle = ExecutionStyle.MAKER_MAKER
    maker_leg: LegRole = LegRole.SPOT  # maker-taker: the leg that rests
    max_slippage: Decimal = Decimal("0.0005")  # taker legs: IOC cap beyond the L2 price covering the quantity

    def to_dict(self) -> dict[str, Any]:
        return {
            "spot_symbol": self.spot_symbol,
            "perp_symbol": self.perp_symbol,
            "quantity": str(self.quantity),
            "spot_side": self.spot_side.value,
            "perp_side": self.perp_side.value,
            "min_spread": None if self.min_spread is None else str(self.min_spread),
            "policy": None if self.policy is None else self.policy.value,
            "execution": self.execution.value,
            "maker_leg": self.maker_leg.value,
            "max_slippage": str(self.max_slippage),
        }


def validate_spec(spec: PackageSpec, markets: Mapping[str, Market]) -> tuple[Market, Market]:
    """Refuse a malformed spec before anything is journaled; return the (spot, perp) markets."""
    quantity = to_decimal("quantity", spec.quantity)
    if quantity <= 0:
        raise SpecError("quantity", spec.quantity, "must be > 0")
    spot = markets.get(spec.spot_symbol)
    if spot is None or spot.kind is not MarketKind.SPOT:
        known = sorted(s for s, m in markets.items() if m.kind is MarketKind.SPOT)
        raise SpecError("spot_symbol", spec.spot_symbol, f"known spot markets: {', '.join(known)}")
    perp = markets.get(spec.perp_symbol)
    if perp is None or perp.kind is not MarketKind.LINEAR:
        known = sorted(s for s, m in markets.items() if m.kind is MarketKind.LINEAR)
        raise SpecError("perp_symbol", spec.perp_symbol, f"known perpetual markets: {', '.join(known)}")
    if spot.base != perp.base:
        raise SpecError("perp_symbol", spec.perp_symbol, f"must trade the same base asset as {spot.symbol}")
    if spec.spot_side == spec.perp_side:
        raise SpecError("perp_side", spec.perp_side.value, "the legs must be on opposite sides")
    if spec.spot_side is not Side.BUY:
        raise SpecError("spot_side", spec.spot_side.value, "only spot buy / perp sell packages are supported")
    if spec.min_spread is not None:
        to_decimal("min_spread", spec.min_spread)
    slippage = to_decimal("max_slippage", spec.max_slippage)
    if not 0 <= slippage < 1:
        raise SpecError("max_slippage", spec.max_slippage, "must be a fraction in [0, 1), e.g. 0.0005 for 5 bp")
    for market in (spot, perp):
        if quantity < market.min_qty:
            raise SpecError("quantity", spec.quantity, f"below {market.symbol} minimum quantity {market.min_qty}")
    return spot, perp
