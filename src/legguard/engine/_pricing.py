"""Pricing and rounding of a package from the live L2 books: pure functions, property-tested.

Post-only spot buy at or below the best bid (one tick better when the spread allows, never crossing), post-only
perp sell at or above the best ask likewise; one base quantity on the coarser of both markets' step grids; and
the spread those limits guarantee, after maker fees on both legs, must clear the configured minimum. The spot
buy is then sized (`size_spot_buy`) so that what is HELD after a fee kept in base equals the perp short.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from functools import lru_cache
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


@lru_cache(maxsize=64)
def common_step(a: Decimal, b: Decimal) -> Decimal:
    """Smallest quantity that lies on both step grids (the least common multiple of the two steps).
    Memoized: it depends only on the two markets, and every package of a pair asked for it again (a tenth
    of pricing a package). A Decimal hashes by value, and equal steps give the same result whatever their
    spelling (the result is normalized)."""
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


def _same(a: Decimal, b: Decimal) -> bool:
    # Equal and spelled alike (compare_total: 0.010 != 0.01): a memoized result then prints as a fresh one.
    return a is b or a.compare_total(b) == 0


@dataclass(frozen=True, slots=True)
class PricedLegs:
    """`price_package`'s answer with what the package plan derives from the prices alone."""

    priced: Priced
    spot_dust: Decimal  # dust_threshold(spot, spot price)
    perp_dust: Decimal | None  # dust_threshold(perp, perp price) (a taker hedge's minimum order); None at price 0


class PriceMemo:
    """The last package priced, kept while both books stand (the engine replaces a book object on every
    update; a book is never changed in place). Packages submitted between two book updates (every package of
    a burst, and most of a steady stream: the books move every ~100 ms, a package is priced in tens of µs)
    priced the same books again: the same Decimal rounding, spread and dust arithmetic each time. `price`
    answers exactly what `price_package` and `dust_threshold` would (the same objects for a repeat); a
    refusal is never kept (it is raised afresh, with its current wording). Likewise `size` for
    `size_spot_buy`, whose inputs also include the fee rate and the desk's dust."""

    __slots__ = ("_args", "_books", "_legs", "_size", "_size_args")

    def __init__(self) -> None:
        self._books: tuple[BookSnapshot, BookSnapshot] | None = None
        self._args: tuple[Market, Market, Decimal, Decimal, bool, bool, Decimal] | None = None
        self._legs: PricedLegs | None = None
        self._size_args: tuple[Market, Market, Decimal, Decimal, Decimal, Decimal] | None = None
        self._size: SpotSize | None = None

    def price(
        self,
        spot_book: BookSnapshot,
        perp_book: BookSnapshot,
        spot: Market,
        perp: Market,
        quantity: Decimal,
        min_spread: Decimal,
        *,
        spot_taker: bool,
        perp_taker: bool,
        max_slippage: Decimal,
    ) -> PricedLegs:
        books, args = self._books, self._args
        if (
            books is not None
            and args is not None
            and self._legs is not None
            and books[0] is spot_book
            and books[1] is perp_book
            and args[0] is spot
            and args[1] is perp
            and args[4] is spot_taker
            and args[5] is perp_taker
            and _same(args[2], quantity)
            and _same(args[3], min_spread)
            and _same(args[6], max_slippage)
        ):
            return self._legs
        self._books = self._legs = None
        p = price_package(spot_book, perp_book, spot, perp, quantity, min_spread, spot_taker=spot_taker,
                          perp_taker=perp_taker, max_slippage=max_slippage)  # fmt: skip
        legs = PricedLegs(
            p,
            dust_threshold(spot, p.spot_price) if p.spot_price > 0 else spot.step_size,
            dust_threshold(perp, p.perp_price) if p.perp_price > 0 else None,
        )
        self._books = (spot_book, perp_book)
        self._args = (spot, perp, quantity, min_spread, spot_taker, perp_taker, max_slippage)
        self._legs = legs
        return legs

    def size(
        self, spot: Market, perp: Market, quantity: Decimal, price: Decimal, fee_rate: Decimal, dust: Decimal
    ) -> SpotSize:
        args = self._size_args
        if (
            args is not None
            and self._size is not None
            and args[0] is spot
            and args[1] is perp
            and _same(args[2], quantity)
            and _same(args[3], price)
            and _same(args[4], fee_rate)
            and _same(args[5], dust)
        ):
            return self._size
        self._size = None
        size = size_spot_buy(spot, perp, quantity, price, fee_rate, dust)
        self._size_args, self._size = (spot, perp, quantity, price, fee_rate, dust), size
        return size
