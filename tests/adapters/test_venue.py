"""The shared venue vocabulary: the funding rate a premium implies (Binance's formula)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from legguard.adapters._venue import implied_funding_rate

D = Decimal


@pytest.mark.parametrize(
    ("premium", "rate"),
    [
        ("0.002", "0.0015"),  # a rich perp: the premium less the clamp's 0.05 %
        ("0.0003", "0.0001"),  # inside the clamp band: the interest component
        ("0.0001", "0.0001"),
        ("-0.001", "-0.0005"),  # a cheap perp: shorts pay
        ("0.02", "0.0075"),  # capped
        ("-0.02", "-0.0075"),
    ],
)
def test_the_implied_rate_is_the_premium_plus_the_clamped_interest_capped(premium: str, rate: str) -> None:
    assert implied_funding_rate(D(premium), D("0.0001")) == D(rate)
