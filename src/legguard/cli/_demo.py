"""`legguard demo`: run the engine against the embedded simulated market, with a live rich table."""

from __future__ import annotations

import dataclasses
import json
import signal
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import trio
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from legguard.engine.app._demo import (
    DEMO_FUNDING_INTERVAL,
    DemoOptions,
    DemoRun,
    demo_strategy,
    run_demo,
    validate_options,
)
from legguard.fsm import ExecutionStyle, LegRole, State


def demo(
    seconds: Annotated[float, typer.Option(help="How long to trade (real seconds).")] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of the simulated market and the fault plan.")] = 7,
    faults: Annotated[
        str, typer.Option(help="none | light | heavy | comma-separated fault names (reject,partial_fill,...).")
    ] = "light",
    db: Annotated[Path, typer.Option(help="Journal file (SQLite).")] = Path("legguard.db"),
    execution: Annotated[
        str, typer.Option(help="Execution style of every pair: maker-maker | maker-taker | taker-taker.")
    ] = "maker-maker",
    maker_leg: Annotated[str, typer.Option(help="maker-taker: the leg that rests (spot | perp).")] = "spot",
    funding_interval: Annotated[
        float, typer.Option(help="Seconds between the simulated venue's funding payments (0: no funding).")
    ] = DEMO_FUNDING_INTERVAL,
    strategy: Annotated[
        str, typer.Option(help="premium (perp premium above a threshold) | funding (the funding-rate signal).")
    ] = "premium",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON report at the end, no live table.")] = False,
) -> None:
    """Trade packages against the simulated market with faults injected; every package ends hedged or flat."""
    console = Console(stderr=as_json)
    styles = [style.value for style in ExecutionStyle]
    for flag, value, allowed in (("--execution", execution, styles), ("--maker-leg", maker_leg, ["spot", "perp"])):
        if value not in allowed:
            console.print(f"[red]error:[/red] {flag}: {value!r} is invalid; allowed: {', '.join(allowed)}")
            raise typer.Exit(2)
    options = DemoOptions(seconds=seconds, seed=seed, faults=faults, db=db, execution=ExecutionStyle(execution),
                          maker_leg=LegRole(maker_leg),
                          funding_interval=None if funding_interval == 0 else funding_interval)  # fmt: skip
    validate_options(options)  # bad options are refused before anything starts (exit 2)
    options = dataclasses.replace(options, strategy=demo_strategy(strategy, options))
    if as_json:
        report = trio.run(_run_with_signals, options, None)
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            report = trio.run(_run_with_signals, options, lambda run: live.update(render(run)))
        console.print()
        console.print(render_summary(report))
        console.print(render_pnl(report["pnl"]))
    bad = {s: n for s, n in report["final_states"].items() if s not in (State.HEDGED, State.FLAT)}
    if bad or report["open_exposure"]:
        console.print(f"[red]UNSAFE END: states {bad}, open exposure {report['open_exposure']}[/red]")
        raise typer.Exit(1)
    truth = report["venue_truth"]
    if report["venue_position_mismatch"] or not truth["ok"]:
        # The engine's beliefs say safe; the venue's books say otherwise: that is the failure that matters.
        problems = truth["problems"] or [f"positions {report['venue_position_mismatch']}"]
        console.print("[red]VENUE DISAGREES WITH THE JOURNAL:[/red]")
        for problem in problems[:20]:
            console.print(f"  {problem}", markup=False)
        raise typer.Exit(1)


async def _run_with_signals(options: DemoOptions, on_tick: Any) -> dict[str, Any]:
    """SIGINT / SIGTERM stop the demo through the same graceful path as --seconds: entries cancelled,
    unwinds finished, hedges kept. A second signal is ignored while the shutdown finishes; the shutdown
    has its own deadlines."""
    holder: dict[str, DemoRun] = {}

    def tick(run: DemoRun) -> None:
        holder["run"] = run
        if on_tick is not None:
            on_tick(run)

    async def watch_signals(cancel_scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                run = holder.get("run")
                if run is not None:
                    run.stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals, nursery.cancel_scope)
        report = await run_demo(options, tick)
        nursery.cancel_scope.cancel()
    return report


def render(run: DemoRun) -> Group:
    engine = run.engine
    if engine is None:
        return Group(Text("starting..."))
    now = trio.current_time()
    states = engine.final_states()
    head = Table(title=f"legguard demo — seed {run.options.seed}, faults {run.options.faults}", expand=False)
    for col in ("elapsed", "engine", *[s.value for s in State], "orphan events", "unwound", "closed", "max naked ms"):
        head.add_column(col, justify="right")
    head.add_row(
        f"{now - run.started:5.1f}s",
        engine.mode.value + (f" ({engine.halt_reason})" if engine.halt_reason else ""),
        *[str(states.get(s.value, 0)) for s in State],
        str(engine.stats.orphan_events),
        str(engine.stats.unwound),
        str(engine.stats.closed),
        f"{engine.stats.max_naked * 1000:.1f}",
    )
    exits = ", ".join(f"{policy} {n}" for policy, n in sorted(engine.stats.exits.items())) or "none yet"
    guard = engine.margin_guard
    margin = f"{guard.last.headroom:.4f}" if guard.last is not None else "-"
    head.caption = f"exits requested by policy: {exits}; margin headroom {margin} ({guard.level})"
    pairs = Table(title="pairs")
    for col in ("spot", "perp", "quantity", "execution", "maker leg"):
        pairs.add_column(col)
    for p in run.options.pairs:
        rests = "both" if p.execution is ExecutionStyle.MAKER_MAKER else "none"
        if p.execution is ExecutionStyle.MAKER_TAKER:
            rests = p.maker_leg.value
        pairs.add_row(p.spot_symbol, p.perp_symbol, str(p.quantity), p.execution.value, rests)
    exposure = Table(title="exposure of packages not hedged (base units)")
    exposure.add_column("symbol")
    exposure.add_column("net", justify="right")
    # Flat packages released from memory left only their dust.
    totals: dict[str, Decimal] = {**engine.retired.spot}
    for sym, amt in engine.retired.perp.items():
        totals[sym] = totals.get(sym, Decimal(0)) + amt
    for h in engine.handles.values():
        if h.core.state is State.HEDGED:
            continue
        e = h.core.exposure()
        for sym, amt in ((h.core.plan.spot.symbol, e.spot), (h.core.plan.perp.symbol, e.perp)):
            totals[sym] = totals.get(sym, Decimal(0)) + amt
    for sym, amt in sorted(totals.items()):
        exposure.add_row(sym, f"{amt:f}")
    recent = Table(title="recent transitions")
    for col in ("t", "package", "source", "trigger", "dest"):
        recent.add_column(col)
    for t, pid, src, trig, dst in list(engine.stats.recent)[-10:]:
        style = "red" if dst == "orphaned" else "green" if dst in ("hedged", "flat") else ""
        recent.add_row(f"{t - run.started:6.2f}", pid, src, trig, Text(dst, style=style))
    return Group(head, pairs, exposure, recent)


def render_summary(report: dict[str, Any]) -> Table:
    table = Table(title="demo result")
    table.add_column("metric")
    table.add_column("value")
    for key, value in report.items():
        if key == "venue_truth":
            verdict = "agrees" if value["ok"] else f"DISAGREES ({len(value['problems'])} problems)"
            value = (f"{verdict}: {value['orders_checked']} orders, {len(value['positions'])} positions, "
                     f"{len(value['balances'])} balances checked against the journal")  # fmt: skip
        if key == "pnl":
            value = f"see the P&L summary below (`legguard audit pnl --db {report['db']}` from the journal)"
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    return table


def _q(value: str) -> str:
    """Quote money for reading: 4 decimals (the --json report carries the exact figures)."""
    return f"{Decimal(value).quantize(Decimal('0.0001')):f}"


def render_pnl(pnl: dict[str, Any]) -> Table:
    """The run's P&L in quote: what the packages made, and whether it adds up to the venue account's change."""
    table = Table(title="P&L summary (USDT)")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_column("note")
    fees = ", ".join(f"{amount} {currency}" for currency, amount in pnl["fees_by_currency"].items()) or "-"
    dust = ", ".join(f"{amount} {asset}" for asset, amount in pnl["dust"].items()) or "-"
    rows = [
        ("packages", str(pnl["packages"]), f"{pnl['hedged']} still hedged"),
        ("realized", _q(pnl["realized"]), "flat packages (fees and funding included)"),
        ("unrealized", _q(pnl["unrealized"]), "packages still hedged, at the venue's live marks"),
        ("fees", _q(pnl["fees"]), f"charged: {fees}"),
        ("funding", _q(pnl["funding"]), f"{pnl['funding_payments']} payment(s) booked to the packages holding "
         f"the short; unattributed {_q(pnl['funding_unattributed'])}"),
        ("slippage", _q(pnl["slippage"]), "against the planned entry prices (+ adverse)"),
        ("dust", _q(pnl["dust_value"]), f"the desk's, beyond its open packages (swept into the next): {dust}"),
        ("total", _q(pnl["total"]), "every package's cash, fees and funding, what is held at the marks"),
    ]  # fmt: skip
    if "venue_change" in pnl:
        verdict = "adds up" if pnl["reconciled"] else "DOES NOT ADD UP"
        why = (f"; {pnl['unpriced']} package(s) the venue liquidated: their buy-backs priced from the venue's fills "
               f"({_q(pnl['liquidation_cash'])})" if pnl["unpriced"] else "")  # fmt: skip
        rows.append(("venue account change", _q(pnl["venue_change"]),
                     f"{verdict}: difference {pnl['difference']} (tolerance {pnl['tolerance']}){why}"))  # fmt: skip
    for item, value, note in rows:
        table.add_row(item, value, note)
    return table
