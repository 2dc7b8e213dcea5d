"""The status dashboard's strategy line: the strategy's verdict per pair in numbers, or why it has none."""

from __future__ import annotations

from legguard.cli._dashboard import _strategy_line


def test_the_strategy_line_shows_each_pairs_numbers_against_its_thresholds() -> None:
    strategy = {
        "name": "funding",
        "errors": 0,
        "last": {
            "ETH/USDT": {"edge": "0.5380", "min_edge": "0.2779", "hold": "0.9827", "close_below": "0.2084", "x": "1"},
            "BTC/USDT": "no funding rate for BTC/USDT:USDT yet",
        },
    }

    line = _strategy_line(strategy)

    assert line == (
        "funding, 0 error(s); BTC/USDT: no funding rate for BTC/USDT:USDT yet; "
        "ETH/USDT edge 0.5380 (enter >= 0.2779), hold 0.9827 (close < 0.2084)"
    )
    assert _strategy_line({"name": "premium", "errors": 2}) == "premium, 2 error(s)"
