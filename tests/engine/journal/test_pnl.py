"""Per-package accounting (engine/journal/_pnl.py, _ledger.py): P&L equals a wallet's cash flows, the engine
journals it when a package goes flat, `audit verify` recomputes it, `audit pnl` aggregates it."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal as D
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from legguard.cli import app
from legguard.domain import OrderStatus, OrderType, RejectReason, Side
from legguard.engine import verify
from legguard.engine.journal import PNL, Journal, LedgerEntry, aggregate, desk_dust, ledger, package_pnl
from legguard.engine.journal import dust as audit_dust
from legguard.engine.journal._pnl import LATE_FEE, apply_late_fee, pnl_of
from legguard.fsm import (
    CloseRequested,
    Dispatch,
    Event,
    LegRole,
    OrderEvent,
    OrderFacts,
    OrderIntent,
    PackageCore,
    PackagePlan,
    Purpose,
    State,
)

runner = CliRunner()


def _plan(prefix: str = "lgtest000001", package_id: str = "P1") -> PackagePlan:
    return PackagePlan.from_dict(
        {
            "package_id": package_id,
            "client_id_prefix": prefix,
            "quantity": "0.5",
            "spot": {"symbol": "ETH/USDT", "side": "buy", "price": "3000", "step": "0.0001", "dust": "0.0001"},
            "perp": {"symbol": "ETH/USDT:USDT", "side": "sell", "price": "3003", "step": "0.001", "dust": "0.001"},
            "policy": "flatten",
        }
    )


# --- the accounting against an independent wallet ------------------------------------------------------

prices = st.decimals(min_value=D("100"), max_value=D("5000"), places=2)
qtys = st.decimals(min_value=D("0.001"), max_value=D("2"), places=3)
fee_rates = st.sampled_from([D(0), D("0.001"), D("0.00075"), D("0.0002")])


def _facts(
    side: str, role: LegRole, purpose: Purpose, n: int, q: D, p: D, fb: D, fq: D, limit: D | None = None
) -> OrderFacts:
    symbol = "ETH/USDT" if role is LegRole.SPOT else "ETH/USDT:USDT"
    intent = OrderIntent(f"lgtest000001-X{n}", role, purpose, 0, symbol, Side(side), OrderType.LIMIT, q,
                         p if limit is None else limit, True, False)  # fmt: skip
    return OrderFacts(intent, OrderStatus.CLOSED, q, p, fb, fq)


@settings(max_examples=200, deadline=None)
@given(q=qtys, p_in=prices, p_out=prices, f_in=prices, f_out=prices, spot_fee=fee_rates, perp_fee=fee_rates,
       funding=st.decimals(min_value=D("-50"), max_value=D("50"), places=4))  # fmt: skip
def test_realized_pnl_equals_the_wallets_change(
    q: D, p_in: D, p_out: D, f_in: D, f_out: D, spot_fee: D, perp_fee: D, funding: D
) -> None:
    # Arrange: spot bought q (fee in base), everything held sold (fee in quote); perp sold q, bought back q.
    fee_base = q * spot_fee
    held = q - fee_base
    orders = [
        _facts("buy", LegRole.SPOT, Purpose.ENTRY, 1, q, p_in, fee_base, D(0)),
        _facts("sell", LegRole.SPOT, Purpose.UNWIND, 2, held, p_out, D(0), held * p_out * spot_fee),
        _facts("sell", LegRole.PERP, Purpose.ENTRY, 3, q, f_in, D(0), q * f_in * perp_fee),
        _facts("buy", LegRole.PERP, Purpose.UNWIND, 4, q, f_out, D(0), q * f_out * perp_fee),
    ]
    # The wallet, step by step: quote and base balances.
    quote = -q * p_in  # spot buy
    base = q - fee_base
    quote += held * p_out - held * p_out * spot_fee  # spot sell
    base -= held
    quote += q * f_in - q * f_in * perp_fee  # perp short opened (linear: cash-settled in quote)
    quote += -q * f_out - q * f_out * perp_fee  # perp short closed
    quote += funding

    # Act
    pnl = pnl_of(_plan(), orders, State.FLAT, funding)

    # Assert
    assert base == 0
    assert pnl.realized == quote
    assert pnl.spot.fees.get("ETH", D(0)) == fee_base
    assert pnl.spot.entry_vwap == p_in and pnl.perp.exit_vwap == f_out


@settings(max_examples=200, deadline=None)
@given(q=qtys, p_in=prices, f_in=prices, spot_mark=prices, perp_mark=prices, spot_fee=fee_rates, perp_fee=fee_rates,
       funding=st.decimals(min_value=D("-50"), max_value=D("50"), places=4))  # fmt: skip
def test_mark_to_market_while_hedged_equals_the_wallet_valued_at_the_marks(
    q: D, p_in: D, f_in: D, spot_mark: D, perp_mark: D, spot_fee: D, perp_fee: D, funding: D
) -> None:
    # Arrange: hedged (spot bought q, fee in base; perp sold q), funding received; marks anywhere.
    orders = [
        _facts("buy", LegRole.SPOT, Purpose.ENTRY, 1, q, p_in, q * spot_fee, D(0)),
        _facts("sell", LegRole.PERP, Purpose.ENTRY, 2, q, f_in, D(0), q * f_in * perp_fee),
    ]
    # The wallet: quote paid and received, base held at the spot mark, the short's unrealized P&L at the perp's.
    wallet = -q * p_in - q * f_in * perp_fee + funding + (q - q * spot_fee) * spot_mark + q * (f_in - perp_mark)

    # Act
    pnl = pnl_of(_plan(), orders, State.HEDGED, funding)

    # Assert
    assert pnl.realized is None and pnl.residual_perp == -q
    assert pnl.value_at({"ETH/USDT": spot_mark, "ETH/USDT:USDT": perp_mark}) == wallet
    # Without marks: each leg at its own last fill price.
    assert pnl.value_at({}) == -q * f_in * perp_fee + funding - q * spot_fee * p_in


def test_a_package_the_venue_reduced_has_no_value_at_marks() -> None:
    sold = _facts("sell", LegRole.PERP, Purpose.ENTRY, 1, D("0.5"), D("3003"), D(0), D(0))
    pnl = pnl_of(_plan(), [sold], State.FLAT, venue_reduced=D("0.5"))
    assert pnl.realized is None and pnl.value_at({"ETH/USDT:USDT": D(3000)}) is None


def test_open_package_has_no_realized_pnl_and_residual_is_the_hedge() -> None:
    bought = _facts("buy", LegRole.SPOT, Purpose.ENTRY, 1, D("0.5"), D("3000"), D("0.0005"), D(0))
    pnl = pnl_of(_plan(), [bought], State.HEDGED)
    assert pnl.realized is None
    assert pnl.residual_base == D("0.4995")
    assert pnl.residual_value == D("0.4995") * D("3000")


def test_entry_slippage_counts_only_adverse_price_against_the_limit() -> None:
    worse = _facts("buy", LegRole.SPOT, Purpose.ENTRY, 1, D("1"), D("3001"), D(0), D(0), limit=D("3000"))
    better = _facts("sell", LegRole.PERP, Purpose.ENTRY, 2, D("1"), D("3004"), D(0), D(0), limit=D("3003"))
    pnl = pnl_of(_plan(), [worse, better], State.HEDGED)
    assert pnl.spot.slippage == D("1") and pnl.perp.slippage == D("-1")


# --- journaled, verified, aggregated --------------------------------------------------------------------


def _run(journal: Journal, core: PackageCore, events: list[Event], mono: float = 1.0) -> None:
    for event in events:
        mono += 0.5
        commands = core.handle(event)
        journal.record_step(core.plan.package_id, event, commands, core.state, core.exposure(), mono)


def _orphaned_then_flat(journal: Journal, n: int) -> PackageCore:
    plan = _plan(f"lg{journal.journal_id}{n:06d}", f"P{n}")
    journal.package_created(plan, {}, 1.0)
    core = PackageCore(plan)
    p = plan.client_id_prefix
    _run(journal, core, [
        Dispatch(),
        OrderEvent(f"{p}-SE0", OrderStatus.CLOSED, D("0.5"), D("3000"), fee_base=D("0.0005")),
        OrderEvent(f"{p}-PE0", OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS),
    ])  # fmt: skip
    assert core.state is State.UNWINDING
    unwind = next(cid for cid, o in core.orders.items() if o.intent.purpose is Purpose.UNWIND)
    _run(journal, core, [OrderEvent(unwind, OrderStatus.CLOSED, D("0.4995"), D("2990"), fee_quote=D("1.4985"))])
    assert core.state is State.FLAT
    return core


def test_verify_recomputes_every_journaled_pnl_and_catches_a_wrong_one(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        good = _orphaned_then_flat(journal, 1)
        journal.record(PNL, "P1", package_pnl(good).to_dict(), 9.0)
        older = package_pnl(good).to_dict()
        del older["venue_reduced"]  # a row written before that figure joined the accounting
        journal.record(PNL, "P1", older, 9.5)
    assert verify(path).ok

    with Journal.open(path) as journal:
        bad = _orphaned_then_flat(journal, 2)
        wrong = package_pnl(bad).to_dict() | {"realized": "1000"}
        journal.record(PNL, "P2", wrong, 9.0)
    report = verify(path)
    assert not report.ok
    assert any("journaled pnl" in p and "P2" in p for p in report.problems)


def test_ledger_and_audit_pnl_add_up(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        cores = [_orphaned_then_flat(journal, n) for n in (1, 2)]
        entries = ledger(journal)
    expected = sum((package_pnl(c).realized or D(0) for c in cores), D(0))
    # spot: -1500 + 0.4995 * 2990 - 1.4985 quote fee = -7.0035 each
    assert expected == 2 * (D("0.4995") * D("2990") - D("1500") - D("1.4985"))
    assert [e.exit_reason for e in entries] == ["kill_switch", "kill_switch"]
    total = aggregate(entries, "pair")[-1]
    assert total["key"] == "total" and D(total["realized"]) == expected and total["flat"] == 2

    result = runner.invoke(app, ["audit", "pnl", "--db", str(path), "--csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows[0]["key"] == "ETH/USDT" and D(rows[-1]["realized"]) == expected

    result = runner.invoke(app, ["audit", "pnl", "--db", str(path), "--json", "--by", "exit-reason"])
    data = json.loads(result.stdout)
    assert [g["key"] for g in data["groups"]] == ["kill_switch", "total"]

    result = runner.invoke(app, ["audit", "show", "P1", "--db", str(path), "--json"])
    assert D(json.loads(result.stdout)["pnl"]["realized"]) == expected / 2


def test_audit_pnl_refuses_a_bad_grouping_and_date(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal.open(path).close()
    for args in (["--by", "week"], ["--since", "yesterday"]):
        result = runner.invoke(app, ["audit", "pnl", "--db", str(path), *args])
        assert result.exit_code == 2
        assert "Traceback" not in result.output


def test_a_short_the_venue_bought_back_itself_leaves_the_pnl_unpriced_not_guessed() -> None:
    # Arrange: entry both legs, then the venue liquidated 0.2 of the perp (no order of ours carries its price)
    bought = _facts("buy", LegRole.SPOT, Purpose.ENTRY, 1, D("0.5"), D("3000"), D(0), D(0))
    sold = _facts("sell", LegRole.SPOT, Purpose.UNWIND, 2, D("0.5"), D("2990"), D(0), D(0))
    short = _facts("sell", LegRole.PERP, Purpose.ENTRY, 3, D("0.5"), D("3003"), D(0), D(0))
    cover = _facts("buy", LegRole.PERP, Purpose.UNWIND, 4, D("0.3"), D("2995"), D(0), D(0))

    pnl = pnl_of(_plan(), [bought, sold, short, cover], State.FLAT, venue_reduced=D("0.2"))

    assert pnl.realized is None and pnl.venue_reduced == D("0.2")
    row = aggregate([LedgerEntry(pnl, 0.0, 1.0, "kill_switch")], "pair")[-1]
    assert (row["flat"], row["unpriced"], D(row["realized"])) == (1, 1, D(0))


def test_a_late_fee_is_replayed_into_the_accounting_and_verified(tmp_path: Path) -> None:
    # Arrange: the unwind's fee came after the package went flat (an order answer without commission).
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        core = _orphaned_then_flat(journal, 1)
        unwind = next(cid for cid, o in core.orders.items() if o.intent.purpose is Purpose.UNWIND)
        before = package_pnl(core)
        journal.record(PNL, "P1", before.to_dict(), 9.0)
        late = {"client_order_id": unwind, "fee_base": "0", "fee_quote": "2.0"}
        journal.record(LATE_FEE, "P1", late, 9.5)
        apply_late_fee(core, late)
        journal.record(PNL, "P1", package_pnl(core).to_dict(), 9.5)
        [entry] = ledger(journal)

    # Assert: cumulative (2.0 replaces 1.4985), in the ledger, and both pnl rows verify at their place.
    assert before.realized is not None and entry.pnl.realized == before.realized - (D("2.0") - D("1.4985"))
    assert verify(path).ok
    with Journal.open(path) as journal:
        journal.record(PNL, "P1", before.to_dict(), 10.0)  # the old figure after the fee: wrong now
    assert not verify(path).ok


# --- exact hedges and the desk's dust (issue 14) ---------------------------------------------------------


def _round_trip(journal: Journal, n: int, sweep: D) -> PackageCore:
    """A package whose spot buy is grossed up for its 0.1 % fee in ETH (less the dust it sweeps in), hedged,
    then closed by the kill switch at 3010 / 3012: it sells what it holds, dust included, on the spot grid."""
    gross = ((D("0.5") - sweep) / D("0.999") / D("0.0001")).to_integral_value(rounding="ROUND_CEILING") * D("0.0001")
    data = _plan(f"lg{journal.journal_id}{n:06d}", f"P{n}").to_dict()
    data["spot"] |= {"amount": str(gross), "fee_rate": "0.001"}
    data["sweep"] = str(sweep)
    plan = PackagePlan.from_dict(data)
    journal.package_created(plan, {}, 1.0)
    core = PackageCore(plan)
    p = plan.client_id_prefix
    _run(journal, core, [
        Dispatch(),
        OrderEvent(f"{p}-SE0", OrderStatus.CLOSED, gross, D("3000"), fee_base=gross / 1000),
        OrderEvent(f"{p}-PE0", OrderStatus.CLOSED, D("0.5"), D("3003"), fee_quote=D("0.3")),
    ])  # fmt: skip
    assert core.state is State.HEDGED and 0 <= core.held_spot() - D("0.5") < D("0.0001")  # exact hedge
    _run(journal, core, [CloseRequested("test", "operator")])
    for cid, o in list(core.orders.items()):
        if o.intent.purpose is Purpose.UNWIND:
            price = D("3010") if o.intent.role is LegRole.SPOT else D("3012")
            _run(journal, core, [OrderEvent(cid, OrderStatus.CLOSED, o.intent.amount, price, fee_quote=D("0.1"))])
    assert core.state is State.FLAT
    return core


def test_dust_is_tracked_across_packages_and_audit_pnl_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        first = _round_trip(journal, 1, D(0))
        left = first.exposure().spot  # 0.5006 bought, 0.0005006 fee, 0.5 sold
        assert left == D("0.0000994")
        second = _round_trip(journal, 2, left)  # the next package sweeps it in and sells it with its own
        entries = ledger(journal)
    assert second.plan.entry_amount(LegRole.SPOT) == D("0.5005")  # one step less than the first's buy
    dust = D("0.0000994") + second.exposure().spot  # the second sold 0.0000005 more than its own fills held
    assert second.exposure().spot == D("-0.0000005") and dust == D("0.0000989")
    (row,) = audit_dust(entries)
    assert row == {"asset": "ETH", "quantity": str(dust), "mark": "3010", "value": str(dust * D("3010"))}
    # P&L still equals the cash flows: the quote the two packages moved plus the dust they left, valued at
    # the price it was left at (each package values its own residual at its last spot fill).
    quote = sum(
        (-o.filled * o.average if o.intent.side is Side.BUY else o.filled * o.average) - o.fee_quote
        for c in (first, second) for o in c.orders.values() if o.average is not None
    )  # fmt: skip
    assert sum((e.pnl.realized or D(0) for e in entries), D(0)) == quote + dust * D("3010")

    result = runner.invoke(app, ["audit", "pnl", "--db", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dust"] == [row]
    result = runner.invoke(app, ["audit", "pnl", "--db", str(path)])
    assert "dust" in result.stdout and "0.0000989" in result.stdout


def test_desk_dust_counts_flat_packages_leftovers_less_what_open_packages_took_over() -> None:
    packages = [
        ("ETH/USDT", State.FLAT, D("0.0000994"), D(0)),  # left behind
        ("ETH/USDT", State.HEDGED, D("0.4999995"), D("0.0000994")),  # swept it in: it is this package's now
        ("BTC/USDT", State.FLAT, D("0.0000012"), D(0)),
    ]
    assert desk_dust(packages) == {"ETH": D(0), "BTC": D("0.0000012")}
    assert desk_dust([*packages[:1], ("ETH/USDT", State.FLAT, D("-0.0000005"), D("0.0000994"))]) == {
        "ETH": D("0.0000989")
    }


def test_money_is_spelled_in_positional_notation_in_groups_and_dust() -> None:
    # Sums of zeros at 7 places and amounts below 1e-6 are what str(Decimal) spells in exponent form ("0E-7",
    # "1.2E-7"): a CSV reader or a spreadsheet may take those for text. Every money field is positional.
    from types import SimpleNamespace
    from typing import cast

    from legguard.engine.journal._pnl import PackagePnl

    zero7, tiny = D("0E-7"), D("1.2E-7")
    leg = SimpleNamespace(notional=D("1E-8"))
    pnl = SimpleNamespace(pair="ETH/USDT", state=State.FLAT, realized=tiny, fees_quote=zero7, funding=zero7,
                          slippage=zero7, residual_value=tiny, spot=leg, perp=leg,
                          value_at=lambda marks: tiny)  # fmt: skip
    entry = LedgerEntry(cast(PackagePnl, pnl), 0.0, 1.0, "flat", spot_mark=D("3E+3"), spot_held=D("1E-8"))
    rows = aggregate([entry], "pair")
    money = [v for row in rows for k, v in row.items() if isinstance(v, str) and k != "key"]
    assert money and not [v for v in money if "E" in v], money
    assert rows[0]["slippage"] == "0.0000000" and rows[0]["realized"] == "0.00000012"
    assert rows[0]["notional"] == "0.00000002" and rows[-1]["key"] == "total"
    (row,) = audit_dust([entry])
    assert row == {"asset": "ETH", "quantity": "0.00000001", "mark": "3000", "value": "0.00003"}
