"""Per-package accounting from the facts the core holds about its orders: entry and exit VWAP per leg, fees per
leg and currency (and in quote), funding, slippage against the planned maker prices, realized P&L once flat.

The same function runs live (the engine journals a `pnl` row when a package goes flat) and offline (`audit
pnl`, and `audit verify`, which recomputes every `pnl` row from the replayed core and fails on a difference).

Rounding rule: nothing is rounded while computing. Every figure is an exact `Decimal` product or sum of the
venue's own decimal strings (fill quantities, average prices, fees), inside Python's default 28-digit context,
which holds every product of two 8-decimal venue numbers below 10^12 exactly. Journaled and compared as those
exact strings; rounded only for display (`legguard audit` shows 4 decimals, half-even).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from legguard.domain import ZERO, Side
from legguard.fsm import LegRole, OrderFacts, PackageCore, PackagePlan, Purpose, State

PNL: Final = "pnl"  # the journal fact written when a package goes flat
FUNDING: Final = "funding"  # a funding payment attributed to a package: {"amount": quote, signed; ...}
# Fees the venue reported for an order after its package finished ({client_order_id, fee_base, fee_quote},
# cumulative): Binance's USD-M order answer carries no commission, so a market unwind can end a package before
# the user stream's trade report with the fee arrives.
LATE_FEE: Final = "late_fee"


def assets_of(symbol: str) -> tuple[str, str]:
    """('ETH', 'USDT') for 'ETH/USDT' and for 'ETH/USDT:USDT'."""
    base, _, rest = symbol.partition("/")
    return base, rest.partition(":")[0]


@dataclass(frozen=True, slots=True)
class LegPnl:
    role: LegRole
    symbol: str
    entry_qty: Decimal
    entry_vwap: Decimal | None
    exit_qty: Decimal
    exit_vwap: Decimal | None
    notional: Decimal  # quote traded on this leg (every fill's quantity x price)
    cash: Decimal  # quote received (+) or paid (-) for this leg's fills, before fees
    fees_quote: Decimal  # every fee of the leg, converted to quote at its fill's price
    fees: Mapping[str, Decimal]  # fees by the currency the venue charged them in
    slippage: Decimal  # quote lost (+) against the planned limit prices (entry limits; exits at market: 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "symbol": self.symbol,
            "entry_qty": str(self.entry_qty),
            "entry_vwap": None if self.entry_vwap is None else str(self.entry_vwap),
            "exit_qty": str(self.exit_qty),
            "exit_vwap": None if self.exit_vwap is None else str(self.exit_vwap),
            "notional": str(self.notional),
            "cash": str(self.cash),
            "fees_quote": str(self.fees_quote),
            "fees": {k: str(v) for k, v in sorted(self.fees.items())},
            "slippage": str(self.slippage),
        }


@dataclass(frozen=True, slots=True)
class PackagePnl:
    package_id: str
    pair: str  # the spot symbol
    state: State
    spot: LegPnl
    perp: LegPnl
    funding: Decimal  # quote received (+) or paid (-) while the short was held
    residual_base: Decimal  # spot base the package still holds (dust once flat; the hedge while hedged)
    residual_value: Decimal  # residual_base at the last spot fill price
    realized: Decimal | None  # once flat: cash - quote fees + funding + residual_value; None while open
    venue_reduced: Decimal = ZERO  # perp short the venue bought back itself (liquidation / ADL), price unknown
    extra: dict[str, Any] = field(default_factory=dict)
    residual_perp: Decimal = ZERO  # perp position the package's own orders leave (the short while hedged)
    last_prices: Mapping[str, Decimal] = field(default_factory=dict)  # symbol -> the leg's last fill price

    @property
    def net_cash(self) -> Decimal:
        """Quote into (+) or out of (-) the account for this package: both legs' cash, less the fees paid in
        quote, plus funding. Fees charged in base are in what is held (`residual_base`), not here."""
        quote = assets_of(self.pair)[1]
        return self.spot.cash + self.perp.cash - self.spot.fees.get(quote, ZERO) - self.perp.fees.get(quote, ZERO) + (
            self.funding)  # fmt: skip

    def value_at(self, marks: Mapping[str, Decimal]) -> Decimal | None:
        """What the package changed the account's value by, with what it still holds valued at `marks`
        (symbol -> price): `net_cash + residual_base x spot mark + residual_perp x perp mark`. Once flat with no
        dust this is `realized`; while hedged it is the mark-to-market P&L. A symbol without a mark is valued at
        the package's own last fill price on it. None when the venue bought back part of the short itself (the
        price of that buy-back is in none of our orders)."""
        if self.venue_reduced:
            return None
        value = self.net_cash
        for held, symbol in ((self.residual_base, self.spot.symbol), (self.residual_perp, self.perp.symbol)):
            if held:
                value += held * marks.get(symbol, self.last_prices.get(symbol, ZERO))
        return value

    @property
    def fees_quote(self) -> Decimal:
        return self.spot.fees_quote + self.perp.fees_quote

    @property
    def slippage(self) -> Decimal:
        return self.spot.slippage + self.perp.slippage

    def to_dict(self) -> dict[str, Any]:
        return {
            "package_id": self.package_id,
            "pair": self.pair,
            "state": self.state.value,
            "spot": self.spot.to_dict(),
            "perp": self.perp.to_dict(),
            "funding": str(self.funding),
            "fees_quote": str(self.fees_quote),
            "slippage": str(self.slippage),
            "residual_base": str(self.residual_base),
            "residual_value": str(self.residual_value),
            "realized": None if self.realized is None else str(self.realized),
            "venue_reduced": str(self.venue_reduced),
            "residual_perp": str(self.residual_perp),
        }


def _vwap(pairs: list[tuple[Decimal, Decimal]]) -> tuple[Decimal, Decimal | None]:
    qty = sum((q for q, _ in pairs), ZERO)
    if qty == 0:
        return ZERO, None
    return qty, sum((q * p for q, p in pairs), ZERO) / qty


def _leg(role: LegRole, symbol: str, orders: Iterable[OrderFacts]) -> tuple[LegPnl, Decimal, Decimal | None]:
    """The leg's figures, the base it holds after fees charged in base, and its last fill price."""
    base, quote = assets_of(symbol)
    entries: list[tuple[Decimal, Decimal]] = []
    exits: list[tuple[Decimal, Decimal]] = []
    cash = notional = fees_quote = slippage = held = ZERO
    fees: dict[str, Decimal] = {}
    last_price: Decimal | None = None
    for o in orders:
        if o.filled == 0 or o.average is None:
            continue
        i, q, p = o.intent, o.filled, o.average
        buy = i.side is Side.BUY
        cash += -q * p if buy else q * p
        notional += q * p
        held += q if buy else -q
        (entries if i.purpose is Purpose.ENTRY else exits).append((q, p))
        if o.fee_base:
            fees[base] = fees.get(base, ZERO) + o.fee_base
            fees_quote += o.fee_base * p
            held -= o.fee_base  # the venue kept part of what was bought (or took more of what was sold)
        if o.fee_quote:
            fees[quote] = fees.get(quote, ZERO) + o.fee_quote
            fees_quote += o.fee_quote
        if i.price is not None and i.purpose is Purpose.ENTRY:
            slippage += (p - i.price) * q if buy else (i.price - p) * q
        last_price = p
    entry_qty, entry_vwap = _vwap(entries)
    exit_qty, exit_vwap = _vwap(exits)
    leg = LegPnl(role, symbol, entry_qty, entry_vwap, exit_qty, exit_vwap, notional, cash, fees_quote, fees, slippage)
    return leg, held, last_price


def package_pnl(core: PackageCore, funding: Decimal = ZERO) -> PackagePnl:
    """The package's accounting from its core's order facts (and the funding attributed to it)."""
    return pnl_of(core.plan, core.orders.values(), core.state, funding, core.venue_reduced)


def pnl_of(
    plan: PackagePlan,
    orders: Iterable[OrderFacts],
    state: State,
    funding: Decimal = ZERO,
    venue_reduced: Decimal = ZERO,
) -> PackagePnl:
    by_role: dict[LegRole, list[OrderFacts]] = {LegRole.SPOT: [], LegRole.PERP: []}
    for o in orders:
        by_role[o.intent.role].append(o)
    spot, spot_held, spot_last = _leg(LegRole.SPOT, plan.spot.symbol, by_role[LegRole.SPOT])
    perp, perp_held, perp_last = _leg(LegRole.PERP, plan.perp.symbol, by_role[LegRole.PERP])
    residual_value = spot_held * spot_last if spot_last is not None else ZERO
    realized: Decimal | None = None
    # A short the venue bought back itself (liquidation, ADL) left at a price none of our orders carries: the
    # package's P&L is then unknown, never guessed (`venue_reduced` says how much).
    if state is State.FLAT and venue_reduced == 0:
        # Fees charged in base are already in the cash: the venue kept part of what was bought, so less was
        # held and sold (and `residual_base` is net of them). Only fees paid in quote come off again.
        quote = assets_of(plan.spot.symbol)[1]
        quote_fees = spot.fees.get(quote, ZERO) + perp.fees.get(quote, ZERO)
        realized = spot.cash + perp.cash - quote_fees + funding + residual_value
    last = {s: p for s, p in ((plan.spot.symbol, spot_last), (plan.perp.symbol, perp_last)) if p is not None}
    return PackagePnl(plan.package_id, plan.spot.symbol, state, spot, perp, funding, spot_held,
                      residual_value, realized, venue_reduced, residual_perp=perp_held, last_prices=last)  # fmt: skip


def apply_late_fee(core: PackageCore, payload: Mapping[str, Any]) -> None:
    """Raise one order's known fees to a journaled `late_fee` row's (cumulative per order: never lowered)."""
    facts = core.orders[str(payload["client_order_id"])]
    facts.fee_base = max(facts.fee_base, Decimal(str(payload["fee_base"])))
    facts.fee_quote = max(facts.fee_quote, Decimal(str(payload["fee_quote"])))


def funding_amount(payload: Mapping[str, Any]) -> Decimal:
    """The signed quote amount of a journaled `funding` row."""
    return Decimal(str(payload["amount"]))


def desk_dust(packages: Iterable[tuple[str, State, Decimal, Decimal]]) -> dict[str, Decimal]:
    """Base the desk holds beyond what its open packages account for, per asset, from each package's (spot
    symbol, state, spot held by its own fills net of fees in base, dust it swept in): what flat packages left
    behind (negative for one that sold dust it swept in) minus the dust open packages took over. Derived from
    fills and fees only: no separate balance is kept that could drift from them."""
    out: dict[str, Decimal] = {}
    for symbol, state, held, sweep in packages:
        base = assets_of(symbol)[0]
        out[base] = out.get(base, ZERO) + (held if state is State.FLAT else -sweep)
    return out
