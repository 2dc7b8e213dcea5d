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
    # An order the venue does not know may still be accepted until its signed timestamp plus the venue's
    # recvWindow has passed on the venue's clock (Binance: 5 s), plus how far that clock may lag ours.
    recv_window: float = 5.0
    clock_allowance: float = 1.0

    def __post_init__(self) -> None:
        for name in ("ack", "fill", "unwind", "leg", "recv_window", "clock_allowance"):
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


def _optional_positive(field_name: str, value: Decimal | None) -> None:
    if value is not None and to_decimal(field_name, value) <= 0:
        raise SpecError(field_name, value, "must be > 0 (or left out for no limit)")


def _fraction(field_name: str, value: Decimal) -> None:
    d = to_decimal(field_name, value)
    if not 0 < d < 1:
        raise SpecError(field_name, value, "must be a fraction between 0 and 1 (exclusive)")


@dataclass(frozen=True, slots=True)
class ExitConfig:
    """When hedged packages are closed, and how long the passive phase of a close may rest.

    A package is closed when the perp premium over spot falls below `basis_below` (the basis converged;
    after `min_hold` seconds), when it has been hedged for `max_hold` seconds, or when its mark-to-market loss
    exceeds `loss_limit` (quote). `None` turns a policy off. The margin guard and operators close too."""

    enabled: bool = True
    basis_below: Decimal | None = Decimal("0.0001")
    min_hold: float = 0.0
    max_hold: float | None = None
    loss_limit: Decimal | None = None
    deadline: float = 3.0  # the passive phase's post-only limits rest at most this long, then aggressive
    interval: float = 0.25  # seconds between policy evaluations

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise SpecError("exit.enabled", self.enabled, "expected true or false")
        if self.basis_below is not None:
            to_decimal("exit.basis_below", self.basis_below)
        if self.min_hold != 0:
            positive_seconds("exit.min_hold", self.min_hold)
        if self.max_hold is not None:
            positive_seconds("exit.max_hold", self.max_hold)
        _optional_positive("exit.loss_limit", self.loss_limit)
        positive_seconds("exit.deadline", self.deadline)
        positive_seconds("exit.interval", self.interval)


@dataclass(frozen=True, slots=True)
class RiskConfig:
    """Inventory and margin limits, checked before every entry against the venue's own balances, and the
    margin guard that watches the perp account's distance to liquidation.

    `headroom` is the venue's figure `1 - maintenance margin / margin balance` (1: no position; 0: liquidation).
    Below `margin_warn` the engine logs and journals; below `margin_act` it stops entries and closes packages,
    oldest first, until the headroom is back at or above `margin_act`."""

    max_pair_notional: Decimal | None = None  # hedged spot notional per pair (quote)
    max_total_notional: Decimal | None = None  # over all pairs (quote)
    max_pair_packages: int | None = None  # packages not flat per pair
    leverage: int = 5  # the perp margin a new short needs: notional / leverage ...
    margin_buffer: Decimal = Decimal("0.1")  # ... times (1 + buffer)
    check_balances: bool = True  # check spot quote and perp margin before every entry
    balance_max_age: float = 5.0  # seconds a balance snapshot from the venue may be reused (Binance weighs
    # an account read at 20 (spot) and 5 (USDⓈ-M): reading both before every entry would eat the budget)
    margin_warn: Decimal = Decimal("0.5")
    margin_act: Decimal = Decimal("0.3")
    margin_guard: bool = True
    margin_interval: float = 2.0  # seconds between margin guard readings
    # Collateral between wallets (read with the margin guard): keep the perp wallet's available margin at
    # `collateral_target` of its margin balance, moving quote from spot when it drifts below target - band
    # (keeping `spot_reserve` on spot), or back to spot when spot is below its reserve and perp above target.
    collateral: bool = False
    collateral_target: Decimal = Decimal("0.5")
    collateral_band: Decimal = Decimal("0.1")
    spot_reserve: Decimal = Decimal(0)
    collateral_max_per_hour: Decimal = Decimal(10_000)  # quote moved in either direction per rolling hour
    collateral_min: Decimal = Decimal(10)  # smaller moves are not worth a request
    collateral_interval: float = 10.0  # seconds between collateral decisions (each reads the spot balance)

    def __post_init__(self) -> None:
        _optional_positive("risk.max_pair_notional", self.max_pair_notional)
        _optional_positive("risk.max_total_notional", self.max_total_notional)
        if self.max_pair_packages is not None and (
            isinstance(self.max_pair_packages, bool) or not isinstance(self.max_pair_packages, int)
            or self.max_pair_packages < 1
        ):  # fmt: skip
            raise SpecError("risk.max_pair_packages", self.max_pair_packages, "must be an integer >= 1")
        if isinstance(self.leverage, bool) or not isinstance(self.leverage, int) or not 1 <= self.leverage <= 125:
            raise SpecError("risk.leverage", self.leverage, "must be an integer from 1 to 125")
        if to_decimal("risk.margin_buffer", self.margin_buffer) < 0:
            raise SpecError("risk.margin_buffer", self.margin_buffer, "must be >= 0")
        if not isinstance(self.check_balances, bool):
            raise SpecError("risk.check_balances", self.check_balances, "expected true or false")
        positive_seconds("risk.balance_max_age", self.balance_max_age)
        _fraction("risk.margin_warn", self.margin_warn)
        _fraction("risk.margin_act", self.margin_act)
        if self.margin_act > self.margin_warn:
            raise SpecError("risk.margin_act", self.margin_act,
                            f"must be at most risk.margin_warn ({self.margin_warn})")  # fmt: skip
        if not isinstance(self.collateral, bool):
            raise SpecError("risk.collateral", self.collateral, "expected true or false")
        _fraction("risk.collateral_target", self.collateral_target)
        band = to_decimal("risk.collateral_band", self.collateral_band)
        if not 0 <= band < min(self.collateral_target, 1 - self.collateral_target):
            raise SpecError("risk.collateral_band", self.collateral_band,
                            "must be >= 0 and leave target - band and target + band inside (0, 1)")  # fmt: skip
        if to_decimal("risk.spot_reserve", self.spot_reserve) < 0:
            raise SpecError("risk.spot_reserve", self.spot_reserve, "must be >= 0")
        _optional_positive("risk.collateral_max_per_hour", self.collateral_max_per_hour)
        _optional_positive("risk.collateral_min", self.collateral_min)
        positive_seconds("risk.collateral_interval", self.collateral_interval)
        if not isinstance(self.margin_guard, bool):
            raise SpecError("risk.margin_guard", self.margin_guard, "expected true or false")
        positive_seconds("risk.margin_interval", self.margin_interval)


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
    funding_interval: float | None = 60.0  # seconds between polls of the venue's funding payments (None: off)
    # The venue keeps a spot buy's fee in the base asset it buys (Binance's default; the sim venue and the
    # emulator): the buy is grossed up so that what is held equals the perp short. False when the account pays
    # fees in another asset (Binance's "use BNB to pay fees") or the venue charges them in quote: no gross-up.
    spot_fee_in_base: bool = True
    # Seconds between rounds keeping the decision path warm while the engine waits (`_warm.HotPathWarmer`: the
    # core on a shadow of the latest package, nothing real). None: off (the default: at 1 ms it costs ~28 % of
    # one core for 5-13 % off the engine overhead here, less and less steadily off the reaction; see
    # docs/performance.md).
    keep_warm: float | None = None
    # Off for an engine built without them (tests, bench, embedding); `legguard run` and the demo turn them on.
    exit: ExitConfig = field(default_factory=lambda: ExitConfig(enabled=False))
    risk: RiskConfig = field(default_factory=lambda: RiskConfig(check_balances=False, margin_guard=False))


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
    # Why the strategy proposed it (its numbers, as text): journaled with the package, shown by `audit show`.
    why: Mapping[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
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
        if self.why is not None:
            out["why"] = dict(self.why)
        return out


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
