"""The simulated wider market: a seeded generator of spot and perp order books and trade prints (spot mid
random walk, perp premium mean-reverting around a positive basis), and a replay of the recorded Binance
BTCUSDT perp depth, which also serves as a template for the shape of generated books.

The stochastic model runs on floats (it is statistics); everything it emits is `Decimal` on the markets'
tick and step grids.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from legguard.domain import Market, MarketKind, Side

Level = tuple[Decimal, Decimal]

RECORDED_DEPTH_DIR = Path("/work/shared/fixtures/binance-recorded/depth")


@dataclass(frozen=True, slots=True)
class TradePrint:
    """One trade in the wider market; `aggressor` is the taker's side."""

    aggressor: Side
    price: Decimal
    quantity: Decimal
    offset: float = 0.0  # when, as a fraction in [0, 1) of the interval until the next step (the emulator)


@dataclass(frozen=True, slots=True)
class MarketTick:
    """What one symbol's market did during one step: its new book, and the prints at that book's touch that
    happen before the next step (each at `offset` of the interval)."""

    symbol: str
    bids: tuple[Level, ...]  # best first
    asks: tuple[Level, ...]
    trades: tuple[TradePrint, ...] = ()


@dataclass(frozen=True, slots=True)
class BookShape:
    """The profile of a book relative to its touch: per side, (distance from the best price in ticks, size)."""

    bids: tuple[tuple[int, Decimal], ...]
    asks: tuple[tuple[int, Decimal], ...]

    @classmethod
    def from_book(cls, bids: Sequence[Level], asks: Sequence[Level], tick: Decimal, levels: int = 20) -> BookShape:
        if not bids or not asks:
            raise ValueError("BookShape.from_book: needs at least one level on each side")

        def side(lv: Sequence[Level]) -> tuple[tuple[int, Decimal], ...]:
            best = lv[0][0]
            return tuple((int(abs(p - best) / tick), q) for p, q in lv[:levels])

        return cls(side(bids), side(asks))


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """Parameters of the simulated market. Rates are per second, volatilities relative."""

    prices: Mapping[str, float] = field(default_factory=lambda: {"ETH": 2000.0, "BTC": 30000.0})
    spot_vol: float = 0.00001  # of the spot mid, per sqrt(second): ETH at 2000 moves ~2 ticks a second
    basis_mean: float = 0.0015  # perp premium over spot: +0.15 %
    basis_vol: float = 0.0008  # stationary standard deviation of the premium
    basis_halflife: float = 6.0  # seconds for a premium excursion to decay by half
    basis_smoothing: float = 3.0  # seconds: the premium drifts rather than jumps from one tick to the next
    levels: int = 15  # per side
    level_usd: float = 15_000.0  # median size of one level
    # Trade flow at the touch, calibrated in docs/market.md: prints the size of the recorded Binance trades (median
    # $413), and as many of them as turn each side's median touch over about twice a second, as the recorded
    # BTCUSDT perp touch ($36k) against that market's traded notional does.
    trade_rate: float = 25.0  # prints per second per symbol
    trade_usd: float = 400.0  # median print (lognormal, sigma 1.2: mean ~$820)
    touch_life: float = 1.0  # seconds: mean life of the touch's size before it is redrawn (cancels, arrivals)
    shapes: Mapping[str, BookShape] = field(default_factory=dict)  # symbol -> book template

    def __post_init__(self) -> None:
        checks: list[tuple[str, float, bool]] = [
            ("spot_vol", self.spot_vol, self.spot_vol >= 0),
            ("basis_vol", self.basis_vol, self.basis_vol >= 0),
            ("basis_mean", self.basis_mean, -0.5 < self.basis_mean < 0.5),
            ("basis_halflife", self.basis_halflife, self.basis_halflife > 0),
            ("basis_smoothing", self.basis_smoothing, self.basis_smoothing > 0),
            ("levels", self.levels, self.levels >= 1),
            ("level_usd", self.level_usd, self.level_usd > 0),
            ("trade_rate", self.trade_rate, self.trade_rate >= 0),
            ("trade_usd", self.trade_usd, self.trade_usd > 0),
            ("touch_life", self.touch_life, self.touch_life > 0),
        ]
        for name, value, ok in checks:
            if not ok or math.isnan(value):
                raise ValueError(f"GeneratorConfig.{name}: invalid value {value!r}")
        for base, price in self.prices.items():
            if not price > 0:
                raise ValueError(f"GeneratorConfig.prices[{base!r}]: must be > 0, got {price!r}")


@dataclass(slots=True)
class _Underlying:
    spot_mid: float
    basis_raw: float  # the Ornstein-Uhlenbeck state
    basis: float  # its exponential smoothing: the premium actually quoted
    spot: Market | None
    perp: Market | None


class MarketGenerator:
    """Deterministic from its seed: same seed and same calls, same ticks."""

    def __init__(self, markets: Mapping[str, Market], config: GeneratorConfig | None = None, seed: int = 0) -> None:
        self.config = config or GeneratorConfig()
        self._rng = random.Random(seed)
        self.now = 0.0
        self._under: dict[str, _Underlying] = {}
        for base, price in self.config.prices.items():
            spot = next((m for m in markets.values() if m.base == base and m.kind is MarketKind.SPOT), None)
            perp = next((m for m in markets.values() if m.base == base and m.kind is MarketKind.LINEAR), None)
            if spot is None and perp is None:
                continue
            b = self.config.basis_mean
            self._under[base] = _Underlying(price, b, b, spot, perp)
        self._last_mid: dict[str, float] = {}
        self._profiles: dict[str, _Profile] = {}
        self._prices: dict[str, dict[int, Decimal]] = {}

    @property
    def bases(self) -> list[str]:
        return list(self._under)

    def spot_mid(self, base: str) -> float:
        return self._under[base].spot_mid

    def perp_mid(self, base: str) -> float:
        u = self._under[base]
        return u.spot_mid * (1 + u.basis)

    def basis(self, base: str) -> float:
        return self._under[base].basis

    def jump(self, base: str, pct: float) -> None:
        """Move spot and perp of `base` by `pct` percent at once (the next step's books show it)."""
        if base not in self._under:
            raise ValueError(f"jump: unknown base {base!r}; known: {sorted(self._under)}")
        if not -50 < pct < 100:
            raise ValueError(f"jump: pct must be a percentage in (-50, 100), got {pct!r}")
        self._under[base].spot_mid *= 1 + pct / 100

    def step(self, dt: float) -> list[MarketTick]:
        """Advance by `dt` seconds; one tick per symbol (spot then perp, per base)."""
        if dt < 0:
            raise ValueError(f"step: dt must be >= 0, got {dt!r}")
        cfg, rng = self.config, self._rng
        self.now += dt
        theta = math.log(2) / cfg.basis_halflife
        alpha = 1 / cfg.basis_smoothing
        # Scale the OU noise so that the smoothed premium has the configured stationary deviation.
        raw_vol = cfg.basis_vol * math.sqrt((alpha + theta) / alpha)
        decay = math.exp(-theta * dt)
        ticks: list[MarketTick] = []
        for u in self._under.values():
            u.spot_mid *= math.exp(cfg.spot_vol * math.sqrt(dt) * rng.gauss(0, 1))
            u.basis_raw = (
                cfg.basis_mean
                + (u.basis_raw - cfg.basis_mean) * decay
                + raw_vol * math.sqrt(1 - decay * decay) * rng.gauss(0, 1)
            )
            u.basis += (u.basis_raw - u.basis) * (1 - math.exp(-alpha * dt))
            if u.spot is not None:
                ticks.append(self._tick(u.spot, u.spot_mid, dt))
            if u.perp is not None:
                ticks.append(self._tick(u.perp, u.spot_mid * (1 + u.basis), dt))
        return ticks

    def _tick(self, market: Market, mid: float, dt: float) -> MarketTick:
        cfg, rng = self.config, self._rng
        step = float(market.step_size)

        def qty(usd: float) -> Decimal:
            return market.step_size * max(1, int(usd / mid / step))

        def level_qty(i: int) -> Decimal:
            return qty(cfg.level_usd * (0.3 if i == 0 else 1 + 0.15 * i) * rng.lognormvariate(0, 0.8))

        prof = self._profiles.get(market.symbol)
        if prof is None:
            prof = self._profiles[market.symbol] = _Profile.draw(rng, cfg.levels, level_qty)
        prof.evolve(rng, level_qty, 1 - math.exp(-dt / cfg.touch_life))
        best_bid = math.floor(mid / float(market.tick_size) - prof.spread / 2)  # in ticks
        best_ask = best_bid + prof.spread
        # Books move by a few ticks per step: the same prices recur, and building a Decimal is not free.
        prices = self._prices.setdefault(market.symbol, {})
        if len(prices) > 50_000:
            prices.clear()

        def price_of(ticks: int) -> Decimal:
            p = prices.get(ticks)
            if p is None:
                p = prices[ticks] = market.tick_size * ticks
            return p

        def side(best: int, direction: int, gaps: list[int], sizes: list[Decimal]) -> tuple[Level, ...]:
            out: list[Level] = []
            price = best
            for gap, size in zip(gaps, sizes, strict=True):
                price += direction * gap
                out.append((price_of(price), size))
            return tuple(out)

        def templated(best: int, direction: int, template: tuple[tuple[int, Decimal], ...]) -> tuple[Level, ...]:
            wobble = rng.uniform(0.7, 1.3)
            return tuple(
                (price_of(best + direction * offset), market.step_size * max(1, int(float(size) * wobble / step)))
                for offset, size in template
            )

        shape = cfg.shapes.get(market.symbol)
        if shape is not None:
            bids, asks = templated(best_bid, -1, shape.bids), templated(best_ask, 1, shape.asks)
        else:
            bids = side(best_bid, -1, prof.bid_gaps, prof.bid_qty)
            asks = side(best_ask, 1, prof.ask_gaps, prof.ask_qty)
        # Prints at the touch; the aggressor leans with the move since the last step.
        last = self._last_mid.get(market.symbol, mid)
        self._last_mid[market.symbol] = mid
        p_buy = 0.5 if mid == last else (0.65 if mid > last else 0.35)
        trades: list[TradePrint] = []
        for _ in range(_poisson(rng, cfg.trade_rate * dt)):
            aggressor = Side.BUY if rng.random() < p_buy else Side.SELL
            price = asks[0][0] if aggressor is Side.BUY else bids[0][0]
            size = qty(cfg.trade_usd * rng.lognormvariate(0, 1.2))
            trades.append(TradePrint(aggressor, price, size, rng.random()))
        trades.sort(key=lambda t: t.offset)
        return MarketTick(market.symbol, bids, asks, tuple(trades))


@dataclass(slots=True)
class _Profile:
    """The slowly changing shape of one generated book: spread, distances between levels, level sizes.

    Persisting it between steps is realistic (deep liquidity rests) and keeps a step cheap: only a few
    levels are redrawn each time.
    """

    spread: int  # ticks between best bid and best ask
    bid_gaps: list[int]  # ticks from the previous level (the first is 0: the touch itself)
    ask_gaps: list[int]
    bid_qty: list[Decimal]
    ask_qty: list[Decimal]

    @staticmethod
    def _gap(rng: random.Random) -> int:
        r = rng.random()
        return 1 if r < 0.7 else (2 if r < 0.9 else 3)

    @classmethod
    def draw(cls, rng: random.Random, levels: int, size: Callable[[int], Decimal]) -> _Profile:
        def gaps() -> list[int]:
            return [0] + [cls._gap(rng) for _ in range(levels - 1)]

        def sizes() -> list[Decimal]:
            return [size(i) for i in range(levels)]

        return cls(1, gaps(), gaps(), sizes(), sizes())

    def evolve(self, rng: random.Random, size: Callable[[int], Decimal], churn: float = 1.0) -> None:
        """`churn`: the probability that the touch's size is redrawn in this step (it lives `touch_life`)."""
        r = rng.random()
        if r < 0.15:  # the spread mostly stays, sometimes widens or tightens by a tick (1..3)
            self.spread = min(3, max(1, self.spread + (1 if r < 0.075 else -1)))
        for sizes in (self.bid_qty, self.ask_qty):
            if rng.random() < churn:
                sizes[0] = size(0)  # the touch churns
            if len(sizes) > 1:
                i = rng.randrange(1, len(sizes))
                sizes[i] = size(i)
        for gaps in (self.bid_gaps, self.ask_gaps):
            if len(gaps) > 1 and rng.random() < 0.1:
                gaps[rng.randrange(1, len(gaps))] = self._gap(rng)


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method: fine for the small means of one step."""
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


# --- replay of recorded depth -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DepthMessage:
    """One snapshot or one diff message of the recorded depth stream."""

    symbol: str
    timestamp_ms: int
    first_update_id: int
    last_update_id: int
    previous_update_id: int  # `pu`: the last id of the message before this one (-1 for a snapshot)
    snapshot: bool
    bids: tuple[Level, ...]  # in file order; quantity 0 removes the level
    asks: tuple[Level, ...]


class DepthReplay:
    """Replays a recorded Binance depth snapshot and its diff stream into an L2 book.

    `gaps` counts diff messages that do not continue the sequence (Binance: the first diff after a snapshot
    must cover snapshot_id + 1, later ones must have `pu` == the previous message's last id). A gap is
    applied anyway and counted: a replay is for shaping a realistic book, not for trading on stale data.
    """

    def __init__(self, messages: Sequence[DepthMessage]) -> None:
        if not messages or not messages[0].snapshot:
            raise ValueError("DepthReplay: the first message must be a snapshot")
        self.messages = list(messages)
        self.symbol = messages[0].symbol
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.last_update_id: int | None = None
        self.gaps = 0
        self._next = 0

    @classmethod
    def from_csv(cls, *paths: Path) -> DepthReplay:
        """Read csv files (symbol,timestamp,first_update_id,last_update_id,side,update_type,price,qty,pu);
        rows are grouped into messages by (update_type, first_update_id, last_update_id), snapshots first."""
        groups: dict[tuple[bool, int, int], list[dict[str, str]]] = {}
        for path in paths:
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    kind = row["update_type"]
                    if kind not in ("snap", "set"):
                        raise ValueError(f"{path}: unknown update_type {kind!r} (expected 'snap' or 'set')")
                    key = (kind == "snap", int(row["first_update_id"]), int(row["last_update_id"]))
                    groups.setdefault(key, []).append(row)
        messages = []
        for (snap, first, last), rows in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][2])):
            levels: dict[str, list[Level]] = {"b": [], "a": []}
            for row in rows:
                if row["side"] not in levels:
                    raise ValueError(f"depth row side must be 'a' or 'b', got {row['side']!r}")
                levels[row["side"]].append((Decimal(row["price"]), Decimal(row["qty"])))
            messages.append(
                DepthMessage(
                    symbol=rows[0]["symbol"],
                    timestamp_ms=int(rows[0]["timestamp"]),
                    first_update_id=first,
                    last_update_id=last,
                    previous_update_id=int(rows[0]["pu"]),
                    snapshot=snap,
                    bids=tuple(levels["b"]),
                    asks=tuple(levels["a"]),
                )
            )
        return cls(messages)

    @classmethod
    def recorded(cls, directory: Path = RECORDED_DEPTH_DIR) -> DepthReplay:
        """The recorded BTCUSDT perp snapshot and diffs shipped with the fixtures."""
        return cls.from_csv(*sorted(directory.glob("*.csv")))

    def apply(self, message: DepthMessage) -> None:
        if message.snapshot:
            self.bids, self.asks = {}, {}
        elif self.last_update_id is not None and not (
            message.previous_update_id == self.last_update_id
            or message.first_update_id <= self.last_update_id + 1 <= message.last_update_id
        ):
            self.gaps += 1
        for book, levels in ((self.bids, message.bids), (self.asks, message.asks)):
            for price, qty in levels:
                if qty == 0:
                    book.pop(price, None)
                else:
                    book[price] = qty
        self.last_update_id = message.last_update_id

    def ticks(self, symbol: str | None = None) -> Iterator[MarketTick]:
        """Apply the remaining messages one by one, yielding the book after each (as `symbol`, default the
        recorded one). The raw replay may be crossed in between: callers feeding a matching engine skip those."""
        while self._next < len(self.messages):
            self.apply(self.messages[self._next])
            self._next += 1
            yield MarketTick(symbol or self.symbol, *self.levels())

    def levels(self) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        return (
            tuple(sorted(self.bids.items(), reverse=True)),
            tuple(sorted(self.asks.items())),
        )

    def replay_all(self) -> DepthReplay:
        for _ in self.ticks():
            pass
        return self

    def shape(self, tick: Decimal, levels: int = 20) -> BookShape:
        """The current book as a template for generated books."""
        bids, asks = self.levels()
        return BookShape.from_book(bids, asks, tick, levels)

    def mid(self) -> Decimal | None:
        bids, asks = self.levels()
        if not bids or not asks:
            return None
        return (bids[0][0] + asks[0][0]) / 2
