"""The status dashboard's lines: the strategy's verdict per pair in numbers, or why it has none; the margin
guard's level and last read, or the streak of failed reads that leaves it blind."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from legguard.cli._dashboard import _margin_line, _strategy_line


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


def test_the_margin_line_shows_the_last_read_or_a_blind_guard_in_red() -> None:
    seeing = {"enabled": True, "level": "ok", "headroom": "0.9123", "read_age_s": 2.5, "failures": 0,
              "blind_s": None, "last_error": ""}  # fmt: skip
    blind = {**seeing, "failures": 3, "blind_s": 75.0, "last_error": "margin: venue unavailable (503)"}

    assert _margin_line(seeing) == "level ok, headroom 0.9123 read 2.5 s ago"
    line = _margin_line(blind)
    assert isinstance(line, Text) and line.style == "bold red"
    assert line.plain == ("BLIND for 75.0 s: 3 failed read(s) (margin: venue unavailable (503)); level ok, last "
                          "headroom 0.9123 read 2.5 s ago")  # fmt: skip
    assert _margin_line({**seeing, "headroom": None, "read_age_s": None}) == "level ok, not read yet"
    off = _margin_line({"enabled": False})
    assert isinstance(off, Text) and off.plain == "guard off ([risk] margin_guard = false)"
    # Printed in the dashboard's table, the config section's name survives (a str cell is read as markup,
    # where "[risk]" is a style tag: it printed "guard off ( margin_guard = false)").
    table = Table()
    table.add_column("margin")
    table.add_row(off)
    console = Console(width=80, record=True)
    console.print(table)
    assert "guard off ([risk] margin_guard = false)" in console.export_text()
