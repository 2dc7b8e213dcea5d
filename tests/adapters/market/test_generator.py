"""The market generator (determinism, well-formed books, prints at the touch, a premium that crosses the
trading threshold both ways) and the replay of the recorded Binance depth."""

from __future__ import annotations

import csv
import itertools
import statistics
from decimal import Decimal
from pathlib import Path

import pytest

from legguard.adapters.market._generator import (
    RECORDED_DEPTH_DIR,
    BookShape,
    DepthReplay,
    GeneratorConfig,
    MarketGenerator,
)
from legguard.adapters.market._matching import MatchingEngine, default_markets
from legguard.domain import Side

D = Decimal
MARKETS = default_markets()
needs_fixtures = pytest.mark.skipif(not RECORDED_DEPTH_DIR.exists(), reason="recorded depth not available")


def run(seed: int, steps: int, dt: float = 0.1, config: GeneratorConfig | None = None) -> list:
    gen = MarketGenerator(MARKETS, config, seed)
    return [gen.step(dt) for _ in range(steps)]


def test_same_seed_same_market_different_seed_different_market() -> None:
    assert run(3, 50) == run(3, 50)
    assert run(3, 50) != run(4, 50)


def test_one_tick_per_symbol_per_step() -> None:
    (ticks,) = run(1, 1)
    assert [t.symbol for t in ticks] == ["ETH/USDT", "ETH/USDT:USDT", "BTC/USDT", "BTC/USDT:USDT"]


def test_books_are_deep_on_the_grid_and_never_crossed() -> None:
    spreads: set[int] = set()
    for ticks in run(5, 300):
        for t in ticks:
            m = MARKETS[t.symbol]
            assert len(t.bids) >= 10
            assert len(t.asks) >= 10
            spread = (t.asks[0][0] - t.bids[0][0]) / m.tick_size
            assert 1 <= spread <= 3, (t.symbol, spread)
            spreads.add(int(spread))
            bid_prices = [p for p, _ in t.bids]
            ask_prices = [p for p, _ in t.asks]
            assert bid_prices == sorted(bid_prices, reverse=True)
            assert len(set(bid_prices)) == len(bid_prices)
            assert ask_prices == sorted(ask_prices)
            assert len(set(ask_prices)) == len(ask_prices)
            for price, qty in t.bids + t.asks:
                assert price % m.tick_size == 0
                assert qty > 0
                assert qty % m.step_size == 0
    assert spreads == {1, 2, 3}


def test_level_sizes_are_realistic() -> None:
    (ticks,) = run(2, 1)
    eth_spot = ticks[0]
    notionals = [p * q for p, q in eth_spot.bids + eth_spot.asks]
    median = statistics.median(notionals)
    assert D(2_000) < median < D(100_000)


def test_prints_happen_at_the_touch_at_the_configured_rate() -> None:
    prints = 0
    sides: set[Side] = set()
    for ticks in run(8, 600):  # one virtual minute
        for t in ticks:
            for p in t.trades:
                prints += 1
                sides.add(p.aggressor)
                assert p.price == (t.asks[0][0] if p.aggressor is Side.BUY else t.bids[0][0])
                assert p.quantity > 0
                assert 0 <= p.offset < 1
            assert [p.offset for p in t.trades] == sorted(p.offset for p in t.trades)
    # 25 prints/s per symbol, 4 symbols, 60 s: 6000 expected (sd ~77)
    assert 5700 < prints < 6300
    assert sides == {Side.BUY, Side.SELL}


def test_premium_mean_reverts_and_crosses_the_threshold_both_ways() -> None:
    eth = {s: m for s, m in MARKETS.items() if m.base == "ETH"}
    gen = MarketGenerator(eth, seed=0)
    premiums = []
    for _ in range(6_000):  # ten virtual minutes
        ticks = gen.step(0.1)
        spot, perp = ticks
        spot_mid = (spot.bids[0][0] + spot.asks[0][0]) / 2
        perp_mid = (perp.bids[0][0] + perp.asks[0][0]) / 2
        premiums.append(float(perp_mid / spot_mid - 1))
    assert 0.0010 < statistics.mean(premiums) < 0.0020
    assert 0.0004 < statistics.pstdev(premiums) < 0.0012
    above = [p > 0.0005 for p in premiums]
    downs = sum(1 for a, b in itertools.pairwise(above) if a and not b)
    ups = sum(1 for a, b in itertools.pairwise(above) if b and not a)
    assert downs >= 5
    assert ups >= 5


def test_jump_moves_spot_and_perp_together() -> None:
    gen = MarketGenerator(MARKETS, GeneratorConfig(spot_vol=0.0, basis_vol=0.0), seed=1)
    gen.step(0.1)
    spot, perp = gen.spot_mid("ETH"), gen.perp_mid("ETH")
    gen.jump("ETH", -0.5)
    gen.step(0.1)
    assert gen.spot_mid("ETH") == pytest.approx(spot * 0.995)
    assert gen.perp_mid("ETH") == pytest.approx(perp * 0.995)
    assert gen.spot_mid("BTC") == pytest.approx(30_000)
    with pytest.raises(ValueError, match="unknown base 'XRP'"):
        gen.jump("XRP", 1)


@pytest.mark.parametrize(
    ("field", "value"), [("basis_halflife", 0.0), ("levels", 0), ("trade_usd", -1.0), ("spot_vol", float("nan"))]
)
def test_config_errors_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"GeneratorConfig.{field}"):
        GeneratorConfig(**{field: value})


def test_shape_template_is_kept_around_the_moving_mid() -> None:
    tick = MARKETS["BTC/USDT:USDT"].tick_size
    shape = BookShape(bids=((0, D("1.5")), (4, D("3.0"))), asks=((0, D("0.5")), (2, D("8.0"))))
    gen = MarketGenerator(MARKETS, GeneratorConfig(shapes={"BTC/USDT:USDT": shape}), seed=3)
    for ticks in [gen.step(0.1) for _ in range(20)]:
        perp = ticks[3]
        assert len(perp.bids) == 2
        assert perp.bids[0][0] - perp.bids[1][0] == 4 * tick
        assert perp.asks[1][0] - perp.asks[0][0] == 2 * tick
        assert D("0.7") * D("8.0") - D("0.001") <= perp.asks[1][1] <= D("1.3") * D("8.0")


# --- recorded depth replay --------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@needs_fixtures
def test_replayed_book_matches_the_csv() -> None:
    snap_rows = read_rows(RECORDED_DEPTH_DIR / "btcusdt-futures-depth-snap.csv")
    diff_rows = read_rows(RECORDED_DEPTH_DIR / "btcusdt-futures-depth-update.csv")
    replay = DepthReplay.recorded()
    ticks = replay.ticks()

    after_snapshot = next(ticks)
    expected_bids = {D(r["price"]): D(r["qty"]) for r in snap_rows if r["side"] == "b"}
    expected_asks = {D(r["price"]): D(r["qty"]) for r in snap_rows if r["side"] == "a"}
    assert dict(after_snapshot.bids) == expected_bids
    assert dict(after_snapshot.asks) == expected_asks
    assert len(after_snapshot.bids) == 100

    after_diff = next(ticks)
    for row in diff_rows:
        book = expected_bids if row["side"] == "b" else expected_asks
        if D(row["qty"]) == 0:
            book.pop(D(row["price"]), None)
        else:
            book[D(row["price"])] = D(row["qty"])
    assert dict(after_diff.bids) == expected_bids
    assert dict(after_diff.asks) == expected_asks
    assert [p for p, _ in after_diff.bids] == sorted(expected_bids, reverse=True)
    assert after_diff.bids[0] == (D("20472.10"), D("22.276"))
    assert after_diff.asks[0] == (D("20472.20"), D("4.211"))  # a one-tick spread
    assert next(ticks, None) is None
    # The recorded diff does not continue the recorded snapshot (recorded ten minutes apart).
    assert replay.gaps == 1
    assert replay.last_update_id == int(diff_rows[0]["last_update_id"])


@needs_fixtures
def test_replayed_book_seeds_the_matching_engine() -> None:
    replay = DepthReplay.recorded().replay_all()
    engine = MatchingEngine()
    bids, asks = replay.levels()
    engine.set_book("BTC/USDT:USDT", bids, asks, now=0.0)
    snap = engine.book("BTC/USDT:USDT", depth=50)
    assert snap.bids == bids[:50]
    assert snap.asks == asks[:50]
    shape = replay.shape(MARKETS["BTC/USDT:USDT"].tick_size, levels=10)
    assert shape.bids[0] == (0, D("22.276"))
    assert shape.bids[1] == (29, D("2.864"))  # 20472.10 - 20469.20 = 29 ticks of 0.1


def test_replay_rejects_unknown_update_types(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "symbol,timestamp,first_update_id,last_update_id,side,update_type,price,qty,pu\n"
        "BTCUSDT,1,1,1,b,delta,100.0,1.0,-1\n"
    )
    with pytest.raises(ValueError, match="unknown update_type 'delta'"):
        DepthReplay.from_csv(bad)
