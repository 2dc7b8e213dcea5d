"""Pricing and rounding of a package from the live L2 books: pure functions, property-tested.

Post-only spot buy at or below the best bid (one tick better when the spread allows, never crossing), post-only
perp sell at or above the best ask likewise; one base quantity on the coarser of both markets' step grids; and
the spread those limits guarantee, after maker fees on both legs, must clear the configured minimum. The spot
buy is then sized (`size_spot_buy`) so that what is HELD after a fee kept in base equals the perp short.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from math import lcm

from legguard.domain import BookSnapshot, Market, Side


class PricingRefused(Exception):
    """The package cannot be priced safely right now (empty book, spread too thin, below minimums)."""


@dataclass(frozen=True, slots=True)
class Priced:
    quantity: Decimal
    spot_price: Decimal
    perp_price: Decimal
    spread_after_fees: Decimal  # fraction of the spot notional, guaranteed if both legs fill at their limits


def common_step(a: Decimal, b: Decimal) -> Decimal:
    """Smallest quantity that lies on both step grids (the least common multiple of the two steps)."""
    if a <= 0 or b <= 0:
        raise ValueError(f"step sizes must be > 0, got {a} and {b}")
    exp = min(a.as_tuple().exponent, b.as_tuple().exponent)
    assert isinstance(exp, int)
    scale = Decimal(1).scaleb(exp)  # 10**exp
    ia, ib = int(a / scale), int(b / scale)
    return (Decimal(lcm(ia, ib)) * scale).normalize()


def round_down(value: Decimal, step: Decimal) -> Decimal:
    return _same_or(value, (value / step).to_integral_value(rounding=ROUND_FLOOR) * step)


def round_up(value: Decimal, step: Decimal) -> Decimal:
    return _same_or(value, (value / step).to_integral_value(rounding=ROUND_CEILING) * step)


def _same_or(value: Decimal, rounded: Decimal) -> Decimal:
    # A value already on its step (a book price on its tick, a quantity on its lot) is returned as the very
    # object it was: every live package holds its plan's prices and amounts, and a copy of a book's price
    # costs 104 bytes each. Only when the representation is identical too (compare_total: 0.010 != 0.01),
    # so nothing printed or journaled changes.
    return value if rounded.compare_total(value) == 0 else rounded


def maker_buy_price(book: BookSnapshot, tick: Decimal) -> Decimal:
    """Best bid, improved by one tick when that still rests below the best ask."""
    bid, ask = book.best_bid, book.best_ask
    if bid is None or ask is None:
        raise PricingRefused(f"{book.symbol}: empty book side")
    bid = round_down(bid, tick)
    improved = bid + tick
    return improved if improved < ask else bid


def maker_sell_price(book: BookSnapshot, tick: Decimal) -> Decimal:
    """Best ask, improved by one tick when that still rests above the best bid."""
    bid, ask = book.best_bid, book.best_ask
    if bid is None or ask is None:
        raise PricingRefused(f"{book.symbol}: empty book side")
    ask = round_up(ask, tick)
    improved = ask - tick
    return improved if improved > bid else ask


def taker_cap(book: BookSnapshot, side: Side, quantity: Decimal, tick: Decimal, max_slippage: Decimal) -> Decimal:
    """The limit of a taker (IOC) leg: the L2 level at which the book covers `quantity`, widened by
    `max_slippage` (a fraction) and rounded onto the tick grid towards the book, so the cap never exceeds the
    bound. The leg fills at that price or better, or (partly) not at all: it never chases past it."""
    levels = book.asks if side is Side.BUY else book.bids
    covered = Decimal(0)
    reach: Decimal | None = None
    for price, qty in levels:
        covered += qty
        if covered >= quantity:
            reach = price
            break
    if reach is None:
        raise PricingRefused(f"{book.symbol}: the book holds {covered} within its depth, less than {quantity}")
    if side is Side.BUY:
        return max(round_down(reach * (1 + max_slippage), tick), reach)
    return min(round_up(reach * (1 - max_slippage), tick), reach)


def spread_after_fees(
    spot_price: Decimal, perp_price: Decimal, spot: Market, perp: Market, *, spot_taker: bool = False,
    perp_taker: bool = False,
) -> Decimal:  # fmt: skip
    """What buying spot at `spot_price` and selling the perp at `perp_price` earns per unit of spot notional,
    after paying each leg's fee (maker, or taker for a taker leg)."""
    spot_fee = spot.taker_fee if spot_taker else spot.maker_fee
    perp_fee = perp.taker_fee if perp_taker else perp.maker_fee
    return (perp_price - spot_price) / spot_price - spot_fee - perp_fee * perp_price / spot_price


def price_package(
    spot_book: BookSnapshot,
    perp_book: BookSnapshot,
    spot: Market,
    perp: Market,
    quantity: Decimal,
    min_spread: Decimal,
    *,
    spot_taker: bool = False,
    perp_taker: bool = False,
    max_slippage: Decimal = Decimal("0.0005"),
) -> Priced:
    """Price a spot-buy / perp-sell package, or raise PricingRefused saying why. A maker leg rests post-only
    at the touch; a taker leg's price is its IOC cap (`taker_cap`), and the spread is judged at that worst
    case, after taker fees."""
    step = common_step(spot.step_size, perp.step_size)
    qty = round_down(quantity, step)
    if qty <= 0:
        raise PricingRefused(f"quantity {quantity} rounds to 0 on the common step {step}")
    if spot_taker:
        spot_price = taker_cap(spot_book, Side.BUY, qty, spot.tick_size, max_slippage)
    else:
        spot_price = maker_buy_price(spot_book, spot.tick_size)
    if perp_taker:
        perp_price = taker_cap(perp_book, Side.SELL, qty, perp.tick_size, max_slippage)
    else:
        perp_price = maker_sell_price(perp_book, perp.tick_size)
    for market, price in ((spot, spot_price), (perp, perp_price)):
        if qty < market.min_qty:
            raise PricingRefused(f"{market.symbol}: quantity {qty} below minimum {market.min_qty}")
        if qty * price < market.min_notional:
            raise PricingRefused(f"{market.symbol}: notional {qty * price} below minimum {market.min_notional}")
    spread = spread_after_fees(spot_price, perp_price, spot, perp, spot_taker=spot_taker, perp_taker=perp_taker)
    if spread < min_spread:
        raise PricingRefused(f"spread after fees {spread:.6f} below minimum {min_spread}")
    return Priced(qty, spot_price, perp_price, spread)


def dust_threshold(market: Market, price: Decimal) -> Decimal:
    """The smallest residual the venue will trade: one step, the minimum quantity and minimum notional."""
    by_notional = round_up(market.min_notional / price, market.step_size) if price > 0 else market.step_size
    return max(market.step_size, market.min_qty, by_notional)


@dataclass(frozen=True, slots=True)
class SpotSize:
    amount: Decimal  # what the spot entry buys
    fee_rate: Decimal  # the fraction of a buy the venue keeps in base (0: the fee is paid elsewhere)
    sweep: Decimal  # desk dust of the base asset the package takes over (its buy is that much smaller)

    def held(self) -> Decimal:
        """What the package is planned to hold: the buy net of its fee, plus the swept dust."""
        return self.amount - self.amount * self.fee_rate + self.sweep


def size_spot_buy(
    spot: Market, perp: Market, quantity: Decimal, price: Decimal, fee_rate: Decimal, dust: Decimal = Decimal(0)
) -> SpotSize:
    """The spot buy of a package whose perp short is `quantity`: grossed up for the fee the venue keeps in
    the base asset, `(quantity - sweep) / (1 - fee_rate)` rounded UP to the spot step, so the spot held equals
    the short to the spot lot step (at least the short, less than one step more).

    `dust` (base the desk holds that no open package accounts for) is swept in, up to one spot step less
    than a perp step: never enough to be hedged on its own, so the perp leg's sizing never changes. No
    sweep when the smaller buy would break the spot minimum quantity or notional."""
    step = spot.step_size

    def gross(held: Decimal) -> Decimal:
        return round_up(held / (1 - fee_rate), step) if fee_rate > 0 else round_up(held, step)

    cap = max(perp.step_size - step, Decimal(0))
    sweep = min(dust, cap) if dust > 0 else Decimal(0)
    amount = gross(quantity - sweep)
    if sweep > 0 and (amount < spot.min_qty or amount * price < spot.min_notional):
        sweep, amount = Decimal(0), gross(quantity)
    return SpotSize(amount, fee_rate, sweep)
