"""The execution-quality bench (engine/bench/_quality.py): every contestant on one market and fault plan,
scored from the venue's fills."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from legguard.adapters.market._matching import Fill
from legguard.domain import Side
from legguard.engine.bench._quality import CONTESTANTS, NAIVE, PERP, SPOT, measure, quality_run, quality_table


def fill(cid: str, symbol: str, side: Side, qty: str, price: str, at: float) -> Fill:
    fee_asset = "ETH" if symbol == SPOT and side is Side.BUY else "USDT"
    return Fill(0, cid, "1", symbol, side, Decimal(price), Decimal(qty), Decimal(0), fee_asset, True, at)


def test_measure_scores_hedged_orphaned_naked_time_and_unwind_slippage() -> None:
    fills = [
        fill("a-SE0", SPOT, Side.BUY, "0.05", "2000", 1.0),
        fill("a-PE0", PERP, Side.SELL, "0.05", "2003", 1.5),  # hedged after 0.5 s naked
        fill("b-SE0", SPOT, Side.BUY, "0.05", "2000", 2.0),  # orphaned: the kill switch sells 1.0 lower
        fill("b-SU0", SPOT, Side.SELL, "0.05", "1999", 4.0),
        fill("c-SE0", SPOT, Side.BUY, "0.05", "2000", 5.0),  # orphaned and never unwound
    ]
    out = measure("x", ["a", "b", "c", "d"], fills, end=10.0, mids={SPOT: Decimal(2000)}).to_dict()
    assert (out["hedged"], out["orphaned"], out["flat"]) == (1, 2, 1)
    assert out["naked_packages"] == 3 and out["naked_p99_s"] == pytest.approx(4.91, abs=0.01)  # of 0, 0.5, 2, 5
    assert out["exposed_at_end"] == 1 and out["exposure_left_quote"] == "100.00"
    assert out["unwind_slippage_quote"] == "0.0500"


def test_every_contestant_trades_the_same_plan_and_legguard_leaves_nothing_exposed(tmp_path: Path) -> None:
    result = quality_run(6, tmp_path, log=lambda _: None)
    assert list(result["results"]) == list(CONTESTANTS)
    for name, r in result["results"].items():
        assert r["packages"] == 6 and r["hedged"] + r["orphaned"] + r["flat"] == 6
        if name != NAIVE:
            assert r["exposed_at_end"] == 0
    table = quality_table(result)
    assert table.count("\n") == 2 + len(CONTESTANTS)
