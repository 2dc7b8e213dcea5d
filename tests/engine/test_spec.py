"""Package specs are refused at the edge with an error naming the field, before anything is journaled."""

from __future__ import annotations

from decimal import Decimal

import pytest

from legguard.adapters import Market, MarketKind, Side
from legguard.engine import PackageSpec, SpecError, validate_spec
from legguard.engine._spec import BreakerConfig, Deadlines

MARKETS = {
    "ETH/USDT": Market("ETH/USDT", "ETHUSDT", MarketKind.SPOT, "ETH", "USDT", Decimal("0.01"), Decimal("0.0001"),
                       Decimal("0.0001"), Decimal(5), Decimal("0.00075"), Decimal("0.001")),
    "ETH/USDT:USDT": Market("ETH/USDT:USDT", "ETHUSDT", MarketKind.LINEAR, "ETH", "USDT", Decimal("0.01"),
                            Decimal("0.001"), Decimal("0.001"), Decimal(20), Decimal("0.0002"), Decimal("0.0005")),
    "BTC/USDT:USDT": Market("BTC/USDT:USDT", "BTCUSDT", MarketKind.LINEAR, "BTC", "USDT", Decimal("0.1"),
                            Decimal("0.001"), Decimal("0.001"), Decimal(100), Decimal("0.0002"), Decimal("0.0005")),
}  # fmt: skip


def spec(**overrides: object) -> PackageSpec:
    fields: dict[str, object] = {"spot_symbol": "ETH/USDT", "perp_symbol": "ETH/USDT:USDT", "quantity": Decimal("1")}
    fields.update(overrides)
    return PackageSpec(**fields)  # type: ignore[arg-type]


def test_valid_spec_returns_both_markets() -> None:
    spot, perp = validate_spec(spec(), MARKETS)
    assert (spot.symbol, perp.symbol) == ("ETH/USDT", "ETH/USDT:USDT")


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"quantity": Decimal(0)}, "quantity", "must be > 0"),
        ({"quantity": Decimal(-1)}, "quantity", "must be > 0"),
        ({"quantity": Decimal("NaN")}, "quantity", "finite"),
        ({"quantity": Decimal("Infinity")}, "quantity", "finite"),
        ({"quantity": "abc"}, "quantity", "expected a number"),
        ({"quantity": Decimal("0.0001")}, "quantity", "minimum quantity 0.001"),
        ({"spot_symbol": "DOGE/USDT"}, "spot_symbol", "known spot markets: ETH/USDT"),
        ({"spot_symbol": "ETH/USDT:USDT"}, "spot_symbol", "known spot markets"),
        ({"perp_symbol": "ETH/USDT"}, "perp_symbol", "known perpetual markets"),
        ({"perp_symbol": "BTC/USDT:USDT"}, "perp_symbol", "same base asset"),
        ({"perp_side": Side.BUY}, "perp_side", "opposite sides"),
        ({"spot_side": Side.SELL, "perp_side": Side.BUY}, "spot_side", "only spot buy"),
    ],
)
def test_bad_spec_names_field_and_value(overrides: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(SpecError, match=words) as info:
        validate_spec(spec(**overrides), MARKETS)
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "3", True])
def test_deadlines_must_be_positive_finite_seconds(value: object) -> None:
    with pytest.raises(SpecError, match=r"deadlines\.ack"):
        Deadlines(ack=value)  # type: ignore[arg-type]


def test_breaker_needs_a_positive_integer() -> None:
    with pytest.raises(SpecError, match=r"breaker\.max_orphans"):
        BreakerConfig(max_orphans=0)
