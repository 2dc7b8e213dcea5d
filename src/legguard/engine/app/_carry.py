"""The funding-rate signal (`[strategy] kind = "funding"`): open a package when the funding it is expected to
collect over a horizon, plus the basis it enters at, pays for the round trip's costs with a margin; ask for a
close when a package opened now would no longer pay.

    notional  = quantity x spot mid
    intervals = funding times within the horizon (the next one, then one per interval)
    carry     = notional x (rate x [the next funding time is within the horizon] + predicted x (intervals - 1))
    basis     = notional x (perp mid / spot mid - 1)
    fees      = notional x 2 x (spot leg fee + perp leg fee)        (maker or taker, per the pair's execution)
    unwind    = notional x max over legs (leg fee + taker fee + the leg's spread + max_slippage)
    orphan    = (orphaned + orphan_prior x orphan_prior_weight) / (dispatched + orphan_prior_weight)
    edge      = carry + basis - fees - 2 x orphan x unwind        (entry and exit each risk one orphan)

    hold      = carry + basis                                      (what keeping a package still earns)

Enter when edge >= min_edge x notional (at most once per `cooldown` per pair). Close the oldest hedged package
of a pair (held at least `min_hold`) when hold < close_below x notional: a held package's entry costs are
paid and its exit costs are due whenever it closes, so only what holding still earns decides (the funding
turned against the short by more than the basis it would still gain). Every decision carries its numbers
(`Edge.why`), journaled with the package or on its `exit` row. docs/strategy.md has the reasoning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from legguard.domain import BookSnapshot, Market
from legguard.fsm import ExecutionStyle, LegRole, State

from ._strategy import Close, Decisions, Entry, FundingView, MarketView, Pair

log = logging.getLogger("legguard.engine.strategy")

ZERO = Decimal(0)
DEFAULT_FUNDING_INTERVAL = 8 * 3600.0  # Binance's, when neither the config nor the venue says


@dataclass(frozen=True, slots=True)
class FundingParams:
    horizon: float = 8 * 3600.0  # seconds of carry counted
    min_edge: Decimal = Decimal("0.0005")  # enter when edge >= this fraction of the notional
    close_below: Decimal = ZERO  # close when carry + basis < this fraction of the notional (< min_edge)
    min_hold: float = 60.0  # seconds hedged before the signal may close a package
    cooldown: float = 0.5  # seconds between entries (and between signal closes) on one pair
    funding_interval: float | None = None  # seconds between funding times (None: the venue's, else 8 h)
    funding_poll: float = 10.0  # seconds between funding-rate reads
    max_funding_age: float = 60.0  # a read older than this is not acted on (no entry, no close)
    orphan_prior: Decimal = Decimal("0.05")  # orphan rate assumed before the engine has measured any
    orphan_prior_weight: int = 20  # how many packages the prior counts as


@dataclass(frozen=True, slots=True)
class Edge:
    """One evaluation of a pair, every term in quote."""

    notional: Decimal
    rate: Decimal
    predicted: Decimal
    intervals: int
    next_in: float  # seconds to the next funding time
    carry: Decimal
    basis: Decimal
    fees: Decimal
    orphan_rate: Decimal
    unwind: Decimal  # the cost of one orphan's unwind
    expected_unwind: Decimal  # 2 x orphan rate x unwind
    edge: Decimal
    min_edge: Decimal  # the thresholds, in quote
    close_below: Decimal

    @property
    def enters(self) -> bool:
        return self.edge >= self.min_edge

    @property
    def hold(self) -> Decimal:
        """What keeping a package still earns over the horizon (its costs are paid or due either way)."""
        return self.carry + self.basis

    @property
    def closes(self) -> bool:
        return self.hold < self.close_below

    def why(self) -> dict[str, str]:
        q = Decimal("0.0001")
        return {
            "edge": f"{self.edge.quantize(q)}",
            "hold": f"{self.hold.quantize(q)}",
            "carry": f"{self.carry.quantize(q)}",
            "basis": f"{self.basis.quantize(q)}",
            "fees": f"{self.fees.quantize(q)}",
            "expected_unwind": f"{self.expected_unwind.quantize(q)}",
            "notional": f"{self.notional.quantize(q)}",
            "rate": str(self.rate),
            "predicted": str(self.predicted),
            "intervals": str(self.intervals),
            "next_funding_in_s": f"{self.next_in:.0f}",
            "orphan_rate": f"{self.orphan_rate:.4f}",
            "min_edge": f"{self.min_edge.quantize(q)}",
            "close_below": f"{self.close_below.quantize(q)}",
        }

    def text(self) -> str:
        return (
            f"edge {self.edge:.4f} = carry {self.carry:.4f} + basis {self.basis:.4f} - fees {self.fees:.4f} - unwind "
            f"{self.expected_unwind:.4f} (orphan rate {self.orphan_rate:.4f}), enter at >= {self.min_edge:.4f}; "
            f"hold {self.hold:.4f} = carry + basis, close below {self.close_below:.4f}"
        )


def funding_intervals(next_in: float, horizon: float, interval: float) -> int:
    """Funding times within `horizon` seconds from now, the next one `next_in` seconds away."""
    if next_in > horizon:
        return 0
    return 1 + math.floor((horizon - next_in) / interval)


def _mid(book: BookSnapshot) -> Decimal | None:
    if book.best_bid is None or book.best_ask is None:
        return None
    return (book.best_bid + book.best_ask) / 2


def _spread(book: BookSnapshot) -> Decimal:
    """The touch's width over its mid (crossed to unwind an orphaned leg)."""
    mid = _mid(book)
    if not mid or book.best_bid is None or book.best_ask is None:
        return ZERO
    return (book.best_ask - book.best_bid) / mid


def _leg_fee(pair: Pair, role: LegRole, market: Market) -> Decimal:
    taker = pair.execution is ExecutionStyle.TAKER_TAKER or (
        pair.execution is ExecutionStyle.MAKER_TAKER and role is not pair.maker_leg
    )
    return market.taker_fee if taker else market.maker_fee


def evaluate(
    pair: Pair,
    books: Mapping[str, BookSnapshot],
    markets: Mapping[str, Market],
    funding: FundingView,
    now: float,
    orphan_rate: Decimal,
    params: FundingParams,
) -> Edge | str:
    """The edge of a package on `pair` opened now, or why it cannot be evaluated."""
    spot_book, perp_book = books.get(pair.spot_symbol), books.get(pair.perp_symbol)
    spot_m, perp_m = markets.get(pair.spot_symbol), markets.get(pair.perp_symbol)
    if spot_book is None or perp_book is None or spot_m is None or perp_m is None:
        return "no book or market yet"
    spot_mid, perp_mid = _mid(spot_book), _mid(perp_book)
    if not spot_mid or not perp_mid:
        return "a book has an empty side"
    notional = pair.quantity * spot_mid
    rate = funding.rate
    nxt = funding.next_funding_at
    interval = params.funding_interval or rate.interval or DEFAULT_FUNDING_INTERVAL
    if nxt is None:
        next_in, intervals = math.inf, 0
    else:
        next_in = nxt - now
        if next_in < 0:  # the read predates a funding time that has passed: the first one after now is next
            next_in += interval * math.ceil(-next_in / interval)
        intervals = funding_intervals(next_in, params.horizon, interval)
    carry = notional * (rate.rate * min(intervals, 1) + rate.predicted * max(intervals - 1, 0))
    basis = notional * (perp_mid / spot_mid - 1)
    spot_fee, perp_fee = _leg_fee(pair, LegRole.SPOT, spot_m), _leg_fee(pair, LegRole.PERP, perp_m)
    fees = notional * 2 * (spot_fee + perp_fee)
    unwind = notional * max(
        fee + m.taker_fee + _spread(b) + pair.max_slippage
        for fee, m, b in ((spot_fee, spot_m, spot_book), (perp_fee, perp_m, perp_book))
    )
    expected_unwind = 2 * orphan_rate * unwind
    edge = carry + basis - fees - expected_unwind
    return Edge(notional, rate.rate, rate.predicted, intervals, next_in, carry, basis, fees, orphan_rate, unwind,
                expected_unwind, edge, params.min_edge * notional, params.close_below * notional)  # fmt: skip


@dataclass(slots=True)
class FundingStrategy:
    """The funding-rate signal (module docstring: the formula)."""

    pairs: tuple[Pair, ...]
    params: FundingParams = field(default_factory=FundingParams)
    name: str = "funding"
    needs_funding: bool = True
    last: dict[str, Edge | str] = field(default_factory=dict)  # pair -> its latest evaluation (for status)
    _last_entry: dict[str, float] = field(default_factory=dict)
    _last_close: dict[str, float] = field(default_factory=dict)
    _zone: dict[str, str] = field(default_factory=dict)  # pair -> enter | hold | close | wait (logged on change)

    def orphan_rate(self, view: MarketView) -> Decimal:
        p = self.params
        weight = Decimal(p.orphan_prior_weight)
        return (Decimal(view.stats.orphaned) + p.orphan_prior * weight) / (Decimal(view.stats.dispatched) + weight)

    def decide(self, view: MarketView) -> Decisions:
        entries: list[Entry] = []
        closes: list[Close] = []
        orphan_rate = self.orphan_rate(view)
        for pair in self.pairs:
            key = pair.spot_symbol
            funding = view.funding.get(pair.perp_symbol)
            if funding is None:
                result: Edge | str = f"no funding rate for {pair.perp_symbol} yet"
            elif view.now - funding.read_at > self.params.max_funding_age:
                result = f"funding rate of {pair.perp_symbol} is {view.now - funding.read_at:.0f}s old"
            else:
                result = evaluate(pair, view.books, view.markets, funding, view.now, orphan_rate, self.params)
            self.last[key] = result
            if isinstance(result, str):
                self._log_zone(key, "wait", result)
                continue
            self._log_zone(key, "enter" if result.enters else "close" if result.closes else "hold", result.text())
            if result.enters and view.now - self._last_entry.get(key, -math.inf) >= self.params.cooldown:
                self._last_entry[key] = view.now
                entries.append(Entry(pair.spec(), result.why()))
            elif result.closes and view.now - self._last_close.get(key, -math.inf) >= self.params.cooldown:
                # hedged_at None: hedged before this run (recovered at start), so held long enough.
                held = [
                    p for p in view.packages
                    if p.spot_symbol == pair.spot_symbol and p.perp_symbol == pair.perp_symbol
                    and p.state is State.HEDGED and not p.closing
                    and (p.hedged_at is None or view.now - p.hedged_at >= self.params.min_hold)
                ]  # fmt: skip
                if held:
                    self._last_close[key] = view.now
                    reason = f"carry + basis {result.hold:.4f} below {result.close_below:.4f}"
                    closes.append(Close(held[0].package_id, reason, result.why()))
        return Decisions(entries, closes)

    def report(self) -> dict[str, dict[str, str] | str]:
        """The latest evaluation of every pair (its numbers, or why it could not be evaluated)."""
        return {k: v if isinstance(v, str) else v.why() for k, v in self.last.items()}

    def _log_zone(self, key: str, zone: str, text: str) -> None:
        if self._zone.get(key) != zone:
            self._zone[key] = zone
            log.info("funding signal %s: %s (%s)", key, zone, text)
