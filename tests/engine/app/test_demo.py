"""`legguard demo`'s P&L summary (engine/app/_demo.py) on the simulated venue, in virtual time: funding is paid
and booked per package, and the packages' accounting adds up to the change of the venue account's value at
the same marks; `audit pnl` on the demo's journal gives the same total."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path

import pytest
from trio.testing import MockClock
from typer.testing import CliRunner

from legguard.cli import app
from legguard.engine._spec import SpecError
from legguard.engine.app._carry import FundingStrategy
from legguard.engine.app._demo import DemoOptions, demo_strategy, run_demo
from legguard.engine.journal import FUNDING, Journal
from legguard.engine.journal._store import TRANSITION

# Every fault but `liquidation`: the venue's own buy-back is priced in none of our orders, so `audit pnl` reports
# such a package unpriced (the demo prices it from the venue's fills).
FAULTS = "reject,postonly_cross,partial_fill,ack_timeout,stream_drop,price_jump,actor_crash,late_landing,stream_lag"


@pytest.mark.parametrize("faults", ["none", FAULTS, "liquidation"])
async def test_demo_pnl_adds_up_to_the_venue_accounts_change(
    autojump_clock: MockClock, tmp_path: Path, faults: str
) -> None:
    db = tmp_path / "demo.db"
    report = await run_demo(DemoOptions(seconds=20.0, seed=5, faults=faults, db=db, funding_interval=3.0))
    pnl = report["pnl"]

    assert report["venue_truth"]["ok"], report["venue_truth"]["problems"]
    assert pnl["funding_payments"] >= 4 and Decimal(pnl["funding"]) != 0
    # The account's change at the venue's marks is the packages' total, to 1e-8 quote per filled order.
    difference = Decimal(pnl["venue_change"]) - Decimal(pnl["total"])
    assert abs(difference) <= Decimal(pnl["tolerance"]), pnl
    assert pnl["reconciled"] is True
    # Money in positional notation, for people and scripts: the difference (~1e-8) was printed "2.6965E-8".
    money = [v for v in pnl.values() if isinstance(v, str)]
    money += [v for d in (pnl["fees_by_currency"], pnl["dust"], pnl["marks"]) for v in d.values()]
    assert not [v for v in money if "E" in v.upper()], money
    assert Decimal(pnl["total"]) != 0 and Decimal(pnl["fees"]) > 0
    with Journal.open(db, readonly=True) as journal:
        funded = {r.package_id for r in journal.rows() if r.kind == FUNDING}
        kill_switch = {r.package_id for r in journal.rows()
                       if r.kind == TRANSITION and r.payload.get("dest") == "orphaned"}  # fmt: skip
    assert funded, "no funding booked to any package"
    if faults != "none":
        assert kill_switch, "no package went through the kill switch"

    # `audit pnl` on the journal, with what is held valued at the same marks, gives the same total.
    marks = [f"--mark={symbol}={price}" for symbol, price in pnl["marks"].items()]
    result = CliRunner().invoke(app, ["audit", "pnl", "--db", str(db), "--json", *marks])
    assert result.exit_code == 0, result.output
    audited = json.loads(result.stdout)
    total = audited["groups"][-1]
    assert total["unpriced"] == sum(1 for p in audited["packages"] if Decimal(p["venue_reduced"]) and
                                    p["state"] == "flat")  # fmt: skip
    if faults == "liquidation":  # the venue buys back part of a short: its buy-back is priced from the venue's fills
        assert pnl["unpriced"] >= 1 and Decimal(pnl["liquidation_cash"]) != 0
    else:
        assert Decimal(total["value"]) + Decimal(audited["funding_unattributed"]) == Decimal(pnl["total"])
    assert Decimal(total["funding"]) + Decimal(audited["funding_unattributed"]) == sum(
        Decimal(str(p["amount"])) for p in _payments(db)
    )
    result = CliRunner().invoke(app, ["audit", "verify", "--db", str(db)])
    assert result.exit_code == 0, result.output


def _payments(db: Path) -> list[dict[str, object]]:
    with Journal.open(db, readonly=True) as journal:
        return [r.payload for r in journal.engine_log() if r.payload.get("event") == "funding_payment"]


async def test_the_demo_trades_on_the_funding_signal(autojump_clock: MockClock, tmp_path: Path) -> None:
    options = DemoOptions(seconds=20.0, seed=5, faults="none", db=tmp_path / "demo.db", funding_interval=3.0)
    strategy = demo_strategy("funding", options)
    assert isinstance(strategy, FundingStrategy) and strategy.params.horizon == 9.0
    report = await run_demo(dataclasses.replace(options, strategy=strategy))

    assert report["venue_truth"]["ok"], report["venue_truth"]["problems"]
    assert sum(report["final_states"].values()) > 0, "the funding signal never entered"
    assert strategy.last, "the signal never evaluated a pair"
    with Journal.open(tmp_path / "demo.db", readonly=True) as journal:
        # Each package carries the numbers it was entered on (the signal's "why").
        whys = [r.payload["spec"].get("why") for r in journal.rows() if r.kind == "package_created"]
    assert whys and all(isinstance(w, dict) and w["strategy"] == "funding" and "edge" in w for w in whys), whys[:3]


@pytest.mark.parametrize(
    ("kind", "interval", "message"),
    [("bogus", 3.0, "allowed: premium, funding"), ("funding", None, "--funding-interval must be > 0")],
)
def test_a_demo_strategy_that_cannot_run_is_refused_by_name(
    tmp_path: Path, kind: str, interval: float | None, message: str
) -> None:
    options = DemoOptions(seconds=1.0, db=tmp_path / "demo.db", funding_interval=interval)
    with pytest.raises(SpecError, match="--strategy") as refused:
        demo_strategy(kind, options)
    assert message in str(refused.value)
    flags = ["--strategy", kind, "--funding-interval", str(interval or 0), "--seconds", "1", "--db", str(options.db)]
    result = CliRunner().invoke(app, ["demo", *flags])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not options.db.exists()
