"""Properties of package pricing and rounding: both legs equal, on both grids, never crossing, and the
guaranteed spread after fees at least the configured minimum."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from legguard.adapters import BookSnapshot, Market, MarketKind
from legguard.engine import PricingRefused, common_step, price_package
from legguard.engine._pricing import (
    PricedLegs,
    PriceMemo,
    dust_threshold,
    maker_buy_price,
    maker_sell_price,
    round_down,
    round_up,
    size_spot_buy,
)

STEPS = [Decimal(s) for s in ("0.00001", "0.0001", "0.001", "0.01", "0.1", "1", "0.003", "0.002", "0.005")]
TICKS = [Decimal(s) for s in ("0.01", "0.1", "0.5", "1")]


def market(kind: MarketKind, tick: Decimal, step: Decimal, maker: Decimal = Decimal("0.0002")) -> Market:
    symbol = "ETH/USDT" if kind is MarketKind.SPOT else "ETH/USDT:USDT"
    return Market(symbol, "ETHUSDT", kind, "ETH", "USDT", tick, step, step, Decimal(5), maker, Decimal("0.0005"))


def book(symbol: str, bid: Decimal, ask: Decimal) -> BookSnapshot:
    return BookSnapshot(symbol, ((bid, Decimal(10)),), ((ask, Decimal(10)),), timestamp=0.0)


@st.composite
def books(draw: st.DrawFn, tick: Decimal) -> tuple[Decimal, Decimal]:
    bid_ticks = draw(st.integers(min_value=1000, max_value=10_000_000))
    spread_ticks = draw(st.integers(min_value=1, max_value=20))
    return bid_ticks * tick, (bid_ticks + spread_ticks) * tick


@given(st.sampled_from(STEPS), st.sampled_from(STEPS))
def test_common_step_is_on_both_grids_and_smallest(a: Decimal, b: Decimal) -> None:
    c = common_step(a, b)
    assert c % a == 0
    assert c % b == 0
    assert c >= max(a, b)
    # nothing smaller that is a multiple of the larger step is also on the other grid
    k = max(a, b)
    m = k
    while m < c:
        assert m % a != 0 or m % b != 0
        m += k


@given(
    st.sampled_from(TICKS),
    st.sampled_from(TICKS),
    st.sampled_from(STEPS),
    st.sampled_from(STEPS),
    st.data(),
    st.decimals(min_value=Decimal("0.001"), max_value=Decimal(100), places=5),
    st.decimals(min_value=Decimal("-0.01"), max_value=Decimal("0.01"), places=5),
)
def test_priced_package_is_safe(
    spot_tick: Decimal,
    perp_tick: Decimal,
    spot_step: Decimal,
    perp_step: Decimal,
    data: st.DataObject,
    quantity: Decimal,
    min_spread: Decimal,
) -> None:
    spot_m = market(MarketKind.SPOT, spot_tick, spot_step, Decimal("0.00075"))
    perp_m = market(MarketKind.LINEAR, perp_tick, perp_step)
    sb, sa = data.draw(books(spot_tick))
    # the perp trades somewhere between 1% cheap and 2% rich, as it does; most draws then price
    pb = (
        sb * (1 + data.draw(st.decimals(min_value=Decimal("-0.01"), max_value=Decimal("0.02"), places=4))) / perp_tick
    ).to_integral_value() * perp_tick + perp_tick
    pa = pb + data.draw(st.integers(min_value=1, max_value=20)) * perp_tick
    spot_book, perp_book = book(spot_m.symbol, sb, sa), book(perp_m.symbol, pb, pa)
    try:
        p = price_package(spot_book, perp_book, spot_m, perp_m, quantity, min_spread)
    except PricingRefused as exc:
        event(f"refused: {str(exc).split(':')[0] if 'spread' not in str(exc) else 'spread'}")
        return
    event("priced")
    # one quantity on both grids, never more than asked
    assert p.quantity % spot_step == 0
    assert p.quantity % perp_step == 0
    assert 0 < p.quantity <= quantity
    # post-only never crosses: the buy rests below the ask, the sell above the bid; on the tick grids
    assert sb <= p.spot_price < sa
    assert pb < p.perp_price <= pa
    assert p.spot_price % spot_tick == 0
    assert p.perp_price % perp_tick == 0
    # the guaranteed spread after maker fees clears the minimum
    earned = p.quantity * p.perp_price * (1 - perp_m.maker_fee) - p.quantity * p.spot_price * (1 + spot_m.maker_fee)
    assert earned / (p.quantity * p.spot_price) >= min_spread - Decimal("1e-18")
    assert p.spread_after_fees >= min_spread


@given(st.sampled_from(TICKS), st.data())
def test_maker_prices_improve_one_tick_only_when_room(tick: Decimal, data: st.DataObject) -> None:
    bid, ask = data.draw(books(tick))
    b = book("X", bid, ask)
    buy, sell = maker_buy_price(b, tick), maker_sell_price(b, tick)
    if ask - bid > tick:
        assert (buy, sell) == (bid + tick, ask - tick)
    else:
        assert (buy, sell) == (bid, ask)


def test_refuses_spread_below_minimum_after_fees() -> None:
    spot_m = market(MarketKind.SPOT, Decimal("0.01"), Decimal("0.0001"), Decimal("0.001"))
    perp_m = market(MarketKind.LINEAR, Decimal("0.01"), Decimal("0.001"))
    # perp rich by 0.05% only: less than the 0.12% of maker fees on both legs
    spot_book = book(spot_m.symbol, Decimal("2000.00"), Decimal("2000.01"))
    perp_book = book(perp_m.symbol, Decimal("2001.00"), Decimal("2001.01"))
    with pytest.raises(PricingRefused, match="spread after fees"):
        price_package(spot_book, perp_book, spot_m, perp_m, Decimal(1), Decimal(0))


def test_refuses_below_min_notional_naming_the_market() -> None:
    spot_m = market(MarketKind.SPOT, Decimal("0.01"), Decimal("0.0001"))
    perp_m = market(MarketKind.LINEAR, Decimal("0.01"), Decimal("0.001"))
    spot_book = book(spot_m.symbol, Decimal("2000.00"), Decimal("2000.01"))
    perp_book = book(perp_m.symbol, Decimal("2010.00"), Decimal("2010.01"))
    with pytest.raises(PricingRefused, match=r"ETH/USDT: notional .* below minimum 5"):
        price_package(spot_book, perp_book, spot_m, perp_m, Decimal("0.002"), Decimal(0))


def test_quantity_rounds_down_to_the_coarser_grid() -> None:
    spot_m = market(MarketKind.SPOT, Decimal("0.01"), Decimal("0.0001"))
    perp_m = market(MarketKind.LINEAR, Decimal("0.01"), Decimal("0.001"))
    spot_book = book(spot_m.symbol, Decimal("2000.00"), Decimal("2000.02"))
    perp_book = book(perp_m.symbol, Decimal("2010.00"), Decimal("2010.02"))
    p = price_package(spot_book, perp_book, spot_m, perp_m, Decimal("1.23456"), Decimal(0))
    assert p.quantity == Decimal("1.234")
    assert (p.spot_price, p.perp_price) == (Decimal("2000.01"), Decimal("2010.01"))


def test_dust_threshold_covers_step_min_qty_and_min_notional() -> None:
    m = market(MarketKind.SPOT, Decimal("0.01"), Decimal("0.0001"))
    assert dust_threshold(m, Decimal(2000)) == Decimal("0.0025")  # 5 USDT / 2000
    assert round_down(Decimal("0.00259"), m.step_size) == Decimal("0.0025")


# --- exact hedges (issue 14) ---------------------------------------------------------------------------

SPOT = Market("ETH/USDT", "ETHUSDT", MarketKind.SPOT, "ETH", "USDT", Decimal("0.01"), Decimal("0.0001"),
              Decimal("0.0001"), Decimal(10), Decimal("0.00075"), Decimal("0.001"))  # fmt: skip
PERP = Market("ETH/USDT:USDT", "ETHUSDT", MarketKind.LINEAR, "ETH", "USDT", Decimal("0.01"), Decimal("0.001"),
              Decimal("0.001"), Decimal(10), Decimal("0.0002"), Decimal("0.0005"))  # fmt: skip


def test_the_spot_buy_is_grossed_up_so_what_is_held_equals_the_short() -> None:
    size = size_spot_buy(SPOT, PERP, Decimal("0.05"), Decimal(2000), SPOT.maker_fee)

    assert size.amount == Decimal("0.0501")  # 0.05 / 0.99925 = 0.0500375..., rounded UP to the step
    assert size.held() == Decimal("0.050062425") and size.sweep == 0
    # without the gross-up the package held 0.0499625 against the 0.05 short
    assert size_spot_buy(SPOT, PERP, Decimal("0.05"), Decimal(2000), Decimal(0)).amount == Decimal("0.05")


@given(
    quantity=st.integers(1, 10_000).map(lambda n: n * Decimal("0.001")),
    rate=st.sampled_from([Decimal(0), Decimal("0.00075"), Decimal("0.001"), Decimal("0.002")]),
    dust=st.integers(0, 30).map(lambda n: n * Decimal("0.0000137")),
)
def test_held_spot_is_the_short_to_the_spot_step(quantity: Decimal, rate: Decimal, dust: Decimal) -> None:
    size = size_spot_buy(SPOT, PERP, quantity, Decimal(2000), rate, dust)

    assert round_down(size.amount, SPOT.step_size) == size.amount  # on the spot grid
    assert 0 <= size.held() - quantity < SPOT.step_size
    assert 0 <= size.sweep <= min(dust, PERP.step_size - SPOT.step_size)  # never a perp step on its own


def test_no_sweep_when_the_smaller_buy_breaks_the_spot_minimums() -> None:
    # 0.005 ETH at 2000 is exactly the 10 USDT minimum notional: a smaller buy would be refused.
    size = size_spot_buy(SPOT, PERP, Decimal("0.005"), Decimal(2000), Decimal(0), Decimal("0.0005"))
    assert (size.amount, size.sweep) == (Decimal("0.005"), 0)
    # With room above the minimum, the dust is swept: the buy shrinks by it.
    size = size_spot_buy(SPOT, PERP, Decimal("0.05"), Decimal(2000), Decimal(0), Decimal("0.0005"))
    assert (size.amount, size.sweep) == (Decimal("0.0495"), Decimal("0.0005"))


@given(
    units=st.integers(min_value=0, max_value=10**9),
    step=st.sampled_from([Decimal("0.01"), Decimal("0.00001"), Decimal("0.5"), Decimal("1")]),
    zeros=st.integers(min_value=0, max_value=3),
)
def test_rounding_returns_a_value_already_on_its_step_as_the_same_object_and_never_changes_its_text(
    units: int, step: Decimal, zeros: int
) -> None:
    on_step = units * step
    padded = Decimal(f"{on_step:f}{'0' * zeros}" if "." in f"{on_step:f}" else f"{on_step:f}")
    for rounding in (round_down, round_up):
        same = rounding(on_step, step)
        assert same is on_step  # a plan holds the book's own price object, not a copy
        padded_result = rounding(padded, step)
        assert padded_result == padded
        # 0.0100 is not returned as itself when the step says 0.01: what is printed and journaled follows the step.
        assert str(padded_result) == str((padded / step).to_integral_value() * step)
    off = on_step + step / 3
    assert round_down(off, step) == on_step and round_up(off, step) == on_step + step


# --- the memo: a package priced again only when its books or inputs changed ------------------------------


def _pair() -> tuple[Market, Market, BookSnapshot, BookSnapshot]:
    spot = market(MarketKind.SPOT, Decimal("0.01"), Decimal("0.0001"))
    perp = market(MarketKind.LINEAR, Decimal("0.01"), Decimal("0.001"))
    spot_book = book(spot.symbol, Decimal(2000), Decimal("2000.5"))
    return spot, perp, spot_book, book(perp.symbol, Decimal(2001), Decimal(2002))


def _memo_price(memo: PriceMemo, spot_book: BookSnapshot, perp_book: BookSnapshot, spot: Market, perp: Market,
                quantity: Decimal, min_spread: Decimal = Decimal(-1), taker: bool = False) -> PricedLegs:  # fmt: skip
    return memo.price(spot_book, perp_book, spot, perp, quantity, min_spread, spot_taker=taker, perp_taker=taker,
                      max_slippage=Decimal("0.0005"))  # fmt: skip


def test_memo_answers_what_pricing_answers_and_reuses_it_while_the_books_stand() -> None:
    spot, perp, sb, pb = _pair()
    memo = PriceMemo()
    for taker in (False, True):
        legs = _memo_price(memo, sb, pb, spot, perp, Decimal("0.05"), taker=taker)
        fresh = price_package(sb, pb, spot, perp, Decimal("0.05"), Decimal(-1), spot_taker=taker, perp_taker=taker)
        assert legs.priced == fresh
        assert legs.spot_dust == dust_threshold(spot, fresh.spot_price)
        assert legs.perp_dust == dust_threshold(perp, fresh.perp_price)
        # the same books, an equal spec built anew: the very same answer, nothing recomputed
        assert _memo_price(memo, sb, pb, spot, perp, Decimal("0.05"), taker=taker) is legs
    # a new book object (the engine replaces a book on every update): priced anew, from the new book
    moved = book(sb.symbol, Decimal(1990), Decimal("1990.5"))
    again = _memo_price(memo, moved, pb, spot, perp, Decimal("0.05"))
    assert again.priced == price_package(moved, pb, spot, perp, Decimal("0.05"), Decimal(-1))
    assert again.priced.spot_price != legs.priced.spot_price


def test_memo_keys_on_the_spelling_of_quantities_and_never_keeps_a_refusal() -> None:
    spot, perp, sb, pb = _pair()
    memo = PriceMemo()
    legs = _memo_price(memo, sb, pb, spot, perp, Decimal("0.05"))
    # equal but spelled otherwise: answered as pricing answers it (the journal prints what the plan holds)
    other = _memo_price(memo, sb, pb, spot, perp, Decimal("0.050"))
    assert other is not legs and str(other.priced.quantity) == str(price_package(
        sb, pb, spot, perp, Decimal("0.050"), Decimal(-1)).quantity)  # fmt: skip
    with pytest.raises(PricingRefused, match="spread after fees"):
        _memo_price(memo, sb, pb, spot, perp, Decimal("0.05"), min_spread=Decimal("0.5"))
    with pytest.raises(PricingRefused, match="spread after fees"):  # asked again: refused again, not remembered
        _memo_price(memo, sb, pb, spot, perp, Decimal("0.05"), min_spread=Decimal("0.5"))
    assert _memo_price(memo, sb, pb, spot, perp, Decimal("0.05")).priced == legs.priced


def test_memo_sizes_as_size_spot_buy_and_again_when_fee_or_dust_change() -> None:
    spot, perp, _, _ = _pair()
    memo = PriceMemo()
    args = (spot, perp, Decimal("0.05"), Decimal("2000.01"))
    first = memo.size(*args, Decimal("0.001"), Decimal(0))
    assert first == size_spot_buy(*args, Decimal("0.001"), Decimal(0))
    assert memo.size(*args, Decimal("0.001"), Decimal(0)) is first
    for fee, dust in ((Decimal("0.00075"), Decimal(0)), (Decimal("0.00075"), Decimal("0.00004"))):
        sized = memo.size(*args, fee, dust)
        assert sized == size_spot_buy(*args, fee, dust)
    assert sized.sweep == Decimal("0.00004") and sized != first


def test_common_step_memo_answers_alike_for_every_spelling() -> None:
    assert common_step(Decimal("0.001"), Decimal("0.0001")) == Decimal("0.001")
    spelled = common_step(Decimal("0.0010"), Decimal("0.00010"))
    assert str(spelled) == str(common_step(Decimal("0.001"), Decimal("0.0001")))
    with pytest.raises(ValueError, match="step sizes must be > 0"):
        common_step(Decimal(0), Decimal("0.1"))
