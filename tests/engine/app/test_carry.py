"""The funding-rate signal's decisions on constructed markets: carry and basis against the round trip's costs,
the measured orphan rate weighting the unwind cost, and a close once a new package would no longer pay."""

from __future__ import annotations

from decimal import Decimal

import pytest

from legguard.adapters._venue import FundingRate
from legguard.adapters.market._matching import default_markets
from legguard.domain import BookSnapshot
from legguard.engine.app._carry import Edge, FundingParams, FundingStrategy, evaluate, funding_intervals
from legguard.engine.app._strategy import FundingView, MarketView, PackageView, Pair, StatsView
from legguard.fsm import ExecutionStyle, State

D = Decimal
ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
PAIR = Pair(ETH, ETH_PERP, D("0.05"))  # notional 100 USDT at a spot mid of 2000
NOW = 1000.0
# Funding every 100 s, the next one in 50 s: a horizon of 150 s holds two funding times.
PARAMS = FundingParams(horizon=150, min_edge=D("0.0005"), close_below=D(0), min_hold=60, cooldown=1)


def book(symbol: str, bid: str, ask: str) -> BookSnapshot:
    return BookSnapshot(symbol, ((D(bid), D(1)),), ((D(ask), D(1)),), NOW)


def funding(rate: str, predicted: str | None = None, *, read_at: float = NOW) -> FundingView:
    # Read at `read_at`: the venue's clock said the next funding time is 50 s after its answer.
    return FundingView(FundingRate(ETH_PERP, D(rate), D(predicted or rate), 1_050_000, 1_000_000, 100.0), read_at)


def view(
    rate: str = "0.001",
    *,
    perp_mid: str = "2003",
    dispatched: int = 0,
    orphaned: int = 0,
    packages: tuple[PackageView, ...] = (),
    now: float = NOW,
    read_at: float = NOW,
) -> MarketView:
    p = D(perp_mid)
    books = {ETH: book(ETH, "1999.9", "2000.1"), ETH_PERP: book(ETH_PERP, str(p - D("0.1")), str(p + D("0.1")))}
    return MarketView(now, books, default_markets(), {ETH_PERP: funding(rate, read_at=read_at)}, packages,
                      StatsView(dispatched, orphaned, 0, "running"))  # fmt: skip


def hedged(package_id: str, hedged_at: float | None, *, closing: bool = False) -> PackageView:
    return PackageView(package_id, ETH, ETH_PERP, State.HEDGED, D("0.05"), D("0.05"), D("-0.05"), D(2000),
                       D(2003), hedged_at, closing, D(0))  # fmt: skip


def test_the_edge_is_carry_plus_basis_minus_fees_and_the_orphan_weighted_unwind() -> None:
    v = view()

    edge = evaluate(PAIR, v.books, v.markets, v.funding[ETH_PERP], NOW, D("0.05"), PARAMS)

    assert isinstance(edge, Edge)
    assert edge.notional == D(100) and edge.intervals == 2 and edge.next_in == 50
    assert edge.carry == D("0.2")  # 100 x (0.001 at the next funding time + 0.001 predicted for the one after)
    assert edge.basis == D("0.15")  # 100 x (2003 / 2000 - 1)
    assert edge.fees == D("0.19")  # 100 x 2 x (spot maker 0.075 % + perp maker 0.02 %)
    # One orphan: the spot leg's maker fee, a taker fee, its spread (0.2 / 2000) and the slippage cap (0.05 %).
    assert edge.unwind == D("0.235") and edge.expected_unwind == D("0.0235")  # x 2 x 5 %
    assert edge.edge == D("0.1365") and edge.min_edge == D("0.05")
    assert edge.enters and not edge.closes


def test_enters_when_the_carry_clears_the_costs_and_explains_why() -> None:
    strategy = FundingStrategy((PAIR,), PARAMS)

    decisions = strategy.decide(view())

    [entry] = decisions.entries
    assert entry.spec.spot_symbol == ETH and entry.spec.quantity == D("0.05")
    assert entry.why["edge"] == "0.1365" and entry.why["carry"] == "0.2000" and entry.why["intervals"] == "2"
    assert entry.why["orphan_rate"] == "0.0500" and entry.why["fees"] == "0.1900"
    assert decisions.closes == []
    # Once per cooldown per pair.
    assert strategy.decide(view(now=NOW + 0.5, read_at=NOW)).entries == []
    assert len(strategy.decide(view(now=NOW + 1.0, read_at=NOW)).entries) == 1


@pytest.mark.parametrize(
    ("rate", "perp_mid", "enters"),
    [
        ("0.001", "2003", True),
        ("0.0001", "2003", False),  # carry 0.02 + basis 0.15 does not pay fees 0.19 + unwind
        ("0.001", "2000", False),  # no basis: carry 0.2 - 0.19 - 0.0235 is below the threshold
        ("0.0015", "2000", True),  # ... unless the funding is richer
        ("-0.001", "2005", False),  # a richer basis does not make up for paying funding
    ],
)
def test_enters_only_on_carry_and_basis_over_costs(rate: str, perp_mid: str, enters: bool) -> None:
    decisions = FundingStrategy((PAIR,), PARAMS).decide(view(rate, perp_mid=perp_mid))

    assert bool(decisions.entries) is enters


def test_the_measured_orphan_rate_weighs_the_unwind_cost_and_changes_the_decision() -> None:
    # The same market: a clean record lets it in, a record of orphans keeps it out.
    clean = FundingStrategy((PAIR,), PARAMS).decide(view(dispatched=180, orphaned=0))
    orphans = FundingStrategy((PAIR,), PARAMS).decide(view(dispatched=20, orphaned=10))

    assert len(clean.entries) == 1 and clean.entries[0].why["orphan_rate"] == "0.0050"  # (0 + 1) / (180 + 20)
    assert orphans.entries == []
    strategy = FundingStrategy((PAIR,), PARAMS)
    strategy.decide(view(dispatched=20, orphaned=10))
    last = strategy.last[ETH]
    assert isinstance(last, Edge) and last.orphan_rate == D("0.275")  # (10 + 0.05 x 20) / (20 + 20)
    assert last.edge == D("0.03075") < last.min_edge


def test_closes_the_oldest_package_held_long_enough_once_a_new_one_would_no_longer_pay() -> None:
    strategy = FundingStrategy((PAIR,), PARAMS)
    packages = (hedged("P1", NOW - 100, closing=True), hedged("P2", NOW - 90), hedged("P3", NOW - 80),
                hedged("P4", NOW - 10))  # fmt: skip

    decisions = strategy.decide(view("-0.001", packages=packages))

    assert decisions.entries == []
    [close] = decisions.closes  # P1 is closing already; one close per cooldown per pair
    assert close.package_id == "P2"
    # Holding still earns carry -0.2 + basis 0.15 = -0.05: below close_below 0.
    assert close.reason == "carry + basis -0.0500 below 0.0000" and close.why["hold"] == "-0.0500"
    assert [c.package_id for c in strategy.decide(view("-0.001", packages=packages[2:], now=NOW + 1)).closes] == ["P3"]
    # P4 has not been hedged for min_hold yet.
    assert strategy.decide(view("-0.001", packages=packages[3:], now=NOW + 2)).closes == []


def test_a_package_recovered_hedged_from_an_earlier_run_counts_as_held_long_enough() -> None:
    decisions = FundingStrategy((PAIR,), PARAMS).decide(view("-0.001", packages=(hedged("P1", None),)))

    assert [c.package_id for c in decisions.closes] == ["P1"]


def test_costs_keep_a_package_out_but_do_not_close_one_that_still_earns() -> None:
    # Carry 0.02 + basis 0.15: a new package does not pay the round trip (edge -0.0435), a held one earns 0.17.
    strategy = FundingStrategy((PAIR,), PARAMS)

    decisions = strategy.decide(view("0.0001", packages=(hedged("P1", NOW - 100),)))

    last = strategy.last[ETH]
    assert isinstance(last, Edge) and last.edge == D("-0.0435") and last.hold == D("0.17")
    assert decisions.entries == [] and decisions.closes == []


def test_holds_between_the_close_and_the_entry_threshold() -> None:
    # edge 0.0365 (one funding time in a 60 s horizon): below min_edge 0.05, above close_below 0.
    params = FundingParams(horizon=60, min_edge=D("0.0005"), close_below=D(0), min_hold=0)

    decisions = FundingStrategy((PAIR,), params).decide(view(packages=(hedged("P1", NOW - 100),)))

    assert decisions.entries == [] and decisions.closes == []


def test_no_decision_without_a_fresh_funding_rate() -> None:
    strategy = FundingStrategy((PAIR,), PARAMS)
    v = view("-0.01", packages=(hedged("P1", NOW - 100),))
    blind = MarketView(v.now, v.books, v.markets, {}, v.packages, v.stats)

    assert strategy.decide(blind).closes == [] and strategy.last[ETH] == f"no funding rate for {ETH_PERP} yet"
    stale = strategy.decide(view("-0.01", packages=v.packages, now=NOW + 61, read_at=NOW))
    assert stale.closes == [] and "61s old" in str(strategy.last[ETH])


def test_a_taker_leg_pays_the_taker_fee_both_ways() -> None:
    pair = Pair(ETH, ETH_PERP, D("0.05"), execution=ExecutionStyle.MAKER_TAKER)  # the perp hedges as taker
    v = view()

    edge = evaluate(pair, v.books, v.markets, v.funding[ETH_PERP], NOW, D("0.05"), PARAMS)

    assert isinstance(edge, Edge) and edge.fees == D("0.25")  # 100 x 2 x (0.075 % + 0.05 %)


@pytest.mark.parametrize(
    ("next_in", "horizon", "interval", "count"),
    [(50, 150, 100, 2), (50, 149, 100, 1), (50, 49, 100, 0), (0, 0, 100, 1), (10, 8 * 3600, 8 * 3600, 1)],
)
def test_funding_times_within_the_horizon(next_in: float, horizon: float, interval: float, count: int) -> None:
    assert funding_intervals(next_in, horizon, interval) == count


def test_a_read_older_than_a_funding_time_counts_from_the_next_one() -> None:
    v = view()
    # Read 70 s ago: the funding time it named (50 s after the read) has passed; the next is 80 s away.
    edge = evaluate(PAIR, v.books, v.markets, funding("0.001", read_at=NOW - 70), NOW, D("0.05"), PARAMS)

    assert isinstance(edge, Edge) and edge.next_in == 80 and edge.intervals == 1
