"""Acceptance for the accounting (docs/accounting.md): the real `Engine` through `CcxtVenue` against the
Binance-wire emulator runs packages to flat (entries, a passive close, a kill-switch unwind) with a funding
payment while hedged, and `legguard audit pnl` on its journal adds up to the change of the emulator account's
value in quote: spot USDT + futures wallet + unrealized perp P&L + ETH held x the spot mid, within 1e-8 quote
per filled order (the venue books each perp fill's realized P&L to 8 decimals)."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import trio
import trio.testing
from conftest import ENGINE_DEADLINES, ETH, ETH_PERP, QTY, STREAM_WAIT, Rig, emulated, engine_on, settle
from typer.testing import CliRunner

from legguard.cli import app
from legguard.domain import OrderStatus
from legguard.engine import Engine, ExitConfig, PackageHandle, PackageSpec
from legguard.engine.journal import FUNDING, LATE_FEE, Journal, package_pnl
from legguard.fsm import PackageCore, Purpose, State

ROUNDING_PER_ORDER = Decimal("0.00000001")
FUNDING_INTERVAL = 2.0  # emulator seconds; its clock only moves when the test advances it


def account(rig: Rig) -> tuple[Decimal, Decimal]:
    """The emulator account from its own books: (quote: spot USDT + futures wallet + unrealized perp P&L at
    its mark, ETH held)."""
    book = rig.emu.engine
    balances = book.balances()
    usdt, eth = balances["USDT"], balances["ETH"]
    quote = usdt.free + usdt.locked + book.perp_wallet() + book.unrealized_pnl(ETH_PERP)
    return quote, eth.free + eth.locked


def marks(rig: Rig) -> dict[str, Decimal]:
    """The documented marks: the spot mid, and the perp's mark price (what the venue values positions at)."""
    spot, perp = rig.emu.engine.mid(ETH), rig.emu.engine.mark_price(ETH_PERP)
    assert spot is not None and perp is not None
    return {ETH: spot, ETH_PERP: perp}


def change(rig: Rig, start: tuple[Decimal, Decimal]) -> Decimal:
    quote, eth = account(rig)
    return quote - start[0] + (eth - start[1]) * marks(rig)[ETH]


def venue_fees(rig: Rig) -> dict[str, Decimal]:
    charged: dict[str, Decimal] = {}
    for fill in rig.emu.engine.fills():
        charged[fill.client_order_id] = charged.get(fill.client_order_id, Decimal(0)) + fill.fee
    return charged


def cores(engine: Engine) -> list[PackageCore]:
    """Every package's core: live ones from memory, flat ones released from it rebuilt from the journal."""
    return [engine.core(row.package_id) for row in engine.journal.packages()]


def journal_fees(engine: Engine) -> dict[str, Decimal]:
    return {cid: o.fee_base + o.fee_quote for core in cores(engine) for cid, o in core.orders.items() if o.filled}


def filled_orders(engine: Engine) -> int:
    return sum(1 for core in cores(engine) for o in core.orders.values() if o.filled)


async def until_core(handle: PackageHandle, predicate: object) -> None:
    assert callable(predicate)
    with trio.fail_after(STREAM_WAIT):
        await handle.wait_until(predicate)


def resting(core: PackageCore, purpose: Purpose, n: int = 2) -> bool:
    return sum(1 for o in core.orders.values() if o.intent.purpose is purpose and o.status is OrderStatus.OPEN) == n


async def trade_through(
    rig: Rig, handle: PackageHandle, purpose: Purpose, perp_quantity: Decimal | None = None
) -> None:
    """Other participants trade through our resting orders of `purpose` (the perp's only `perp_quantity`)."""
    orders = [o for o in handle.core.orders.values() if o.intent.purpose is purpose and o.status is OrderStatus.OPEN]

    def trade() -> None:  # one step on the emulator's loop: both legs fill together
        for o in orders:
            assert o.intent.price is not None
            market = rig.emu.engine.markets[o.intent.symbol]
            quantity = o.intent.amount if perp_quantity is None or o.intent.symbol == ETH else perp_quantity
            rig.emu.trade(market, o.intent.side.opposite, o.intent.price, quantity)

    await rig.on_emulator(trade)


async def unpaused(rig: Rig, engine: Engine) -> None:
    """The local request budget is full again (a funding poll spends much of it, and an entry leg the budget
    refuses would void the package) and new packages are not paused."""
    await rig.venue.refill_budgets()
    await trio.sleep(max(0.0, engine.paused_until - trio.current_time()))


async def hedge(rig: Rig, engine: Engine) -> str:
    await unpaused(rig, engine)
    pid = engine.submit(PackageSpec(ETH, ETH_PERP, QTY, min_spread=Decimal(-1)))
    handle = engine.handles[pid]
    await until_core(handle, lambda c: resting(c, Purpose.ENTRY))
    await trade_through(rig, handle, Purpose.ENTRY)
    assert await settle(engine, pid) is State.HEDGED
    return pid


async def close(rig: Rig, engine: Engine, pid: str) -> None:
    handle = engine.handles[pid]
    assert engine.request_close(pid, "test")
    await until_core(handle, lambda c: resting(c, Purpose.EXIT))
    await trade_through(rig, handle, Purpose.EXIT)
    assert await settle(engine, pid) is State.FLAT


async def test_audit_pnl_adds_up_to_the_emulator_accounts_change(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.rate = 1.0  # real speed; the test jumps it past the leg deadline
    db = tmp_path / "j.db"
    deadlines = replace(ENGINE_DEADLINES, leg=3.0)
    async with emulated(emulator={"funding_interval": FUNDING_INTERVAL}) as rig:
        start = account(rig)
        # No exit policy closes a package by itself, and a passive close rests until the test fills it (on a
        # loaded machine the default 3 s could pass first).
        async with engine_on(rig, db, deadlines, ExitConfig(enabled=False, deadline=60.0)) as engine:
            # Two packages hedged; a funding time passes while they hold the short; the engine books it.
            first, second = await hedge(rig, engine), await hedge(rig, engine)
            await rig.on_emulator(rig.emu.advance, FUNDING_INTERVAL)
            assert await engine.poll_funding(rig.venue) == 1
            funding = [engine.handles[pid].funding for pid in (first, second)]
            # Equal shorts, equal parts (the split's last 1e-8 goes to one of them); the payment in full.
            [paid] = [r for r in rig.emu.income if r["incomeType"] == "FUNDING_FEE"]
            assert funding[0] != 0 and abs(funding[0] - funding[1]) <= Decimal("0.00000001")
            assert sum(funding) == Decimal(paid["income"])

            # Mark-to-market while hedged: the packages' value at the venue's marks is the account's change.
            hedged = [package_pnl(engine.handles[pid].core, engine.handles[pid].funding) for pid in (first, second)]
            assert all(p.realized is None and p.residual_perp == -QTY for p in hedged)
            values = [p.value_at(marks(rig)) for p in hedged]
            assert None not in values
            assert abs(change(rig, start) - sum(v for v in values if v is not None)) <= ROUNDING_PER_ORDER * 4

            # A passive close, filled by the market.
            await close(rig, engine, first)
            # The kill switch: the spot fills, the perp only in part; the leg deadline passes, the rest is
            # cancelled and both legs unwound at market.
            await unpaused(rig, engine)
            third = engine.submit(PackageSpec(ETH, ETH_PERP, QTY, min_spread=Decimal(-1)))
            handle = engine.handles[third]
            await until_core(handle, lambda c: resting(c, Purpose.ENTRY))
            await trade_through(rig, handle, Purpose.ENTRY, perp_quantity=Decimal("0.02"))
            await until_core(handle, lambda c: c.unmatched() > 0 and handle.leg_timer_started)
            await trio.testing.wait_all_tasks_blocked()  # the leg timer is asleep on its deadline
            mock_clock.jump(deadlines.leg)
            assert await settle(engine, third) is State.FLAT
            assert handle.ever_orphaned
            await close(rig, engine, second)

            # Every fee the venue charged is the one the journal holds, order by order: also the fee of the
            # market unwind, whose order answer (no commission on USD-M) ended the package before the trade
            # report with the fee came (journaled as a `late_fee` row).
            with trio.move_on_after(STREAM_WAIT):
                while journal_fees(engine) != venue_fees(rig):  # noqa: ASYNC110 (the journal offers no event)
                    await trio.sleep(0.05)
            assert journal_fees(engine) == venue_fees(rig)
            venue_marks = marks(rig)
            venue_change = change(rig, start)
            tolerance = ROUNDING_PER_ORDER * filled_orders(engine)
            assert all(core.state is State.FLAT for core in cores(engine))

    # `audit pnl` from the journal alone, what is still held (dust) valued at the same marks.
    args = [f"--mark={symbol}={price}" for symbol, price in venue_marks.items()]
    result = CliRunner().invoke(app, ["audit", "pnl", "--db", str(db), "--json", "--by", "exit-reason", *args])
    assert result.exit_code == 0, result.output
    audited = json.loads(result.stdout)
    total = audited["groups"][-1]
    assert (total["packages"], total["flat"], total["unpriced"]) == (3, 3, 0)
    assert {g["key"] for g in audited["groups"][:-1]} == {"close:operator", "kill_switch"}
    journal_total = Decimal(total["value"]) + Decimal(audited["funding_unattributed"])
    assert abs(journal_total - venue_change) <= tolerance, (journal_total, venue_change, tolerance)
    # Its parts: realized is cash less quote fees plus funding plus dust at the last fill price; the dust
    # is then revalued at the mark.
    assert Decimal(total["funding"]) == sum(funding) != 0
    packages = audited["packages"]
    dust = sum(Decimal(p["residual_base"]) for p in packages)
    revalued = Decimal(total["realized"]) - Decimal(total["dust_value"]) + dust * venue_marks[ETH]
    assert revalued == Decimal(total["value"])
    with Journal.open(db, readonly=True) as journal:
        assert sum(1 for r in journal.rows() if r.kind == FUNDING) == 2
        late = [r.package_id for r in journal.rows() if r.kind == LATE_FEE]
    assert set(late) <= {third}  # only a market unwind's fee can come after its package finished
    result = CliRunner().invoke(app, ["audit", "verify", "--db", str(db)])
    assert result.exit_code == 0, result.output
