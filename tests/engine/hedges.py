"""The exact-hedge check the engine suites share (issue 14): a hedged package holds spot equal to its perp
short to the spot lot step, net of the fee the venue kept in base (the buy was grossed up for it)."""

from __future__ import annotations

from decimal import Decimal

from legguard.fsm import PackageCore


def assert_exact_hedge(core: PackageCore, short: Decimal | None = None) -> None:
    """Held spot (fills net of fees in base, plus swept dust) is at least the perp short and less than one
    spot step above it; the short is the planned quantity unless `short` says otherwise."""
    exp = core.exposure()
    held = exp.spot + core.plan.sweep
    expected = core.plan.quantity if short is None else short
    assert -exp.perp == expected, ("perp short", -exp.perp, expected)
    assert 0 <= held - expected < core.plan.spot.step, ("spot held vs perp short", held, expected, core.plan.spot.step)
