"""`legguard recover --config FILE`: after a crash, bring every package the journal left unfinished back to
hedged or flat from the venue's facts, print what was found and done, and exit (0: everything safe)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Annotated

import trio
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from legguard.engine._engine import Engine
from legguard.engine._recovery import RecoveryReport, settle_recovered
from legguard.engine.app._config import ConfigError, RunConfig, load_config
from legguard.engine.app._control import claim_socket, socket_path
from legguard.engine.app._runner import open_checked_venue
from legguard.engine.journal._anchors import Anchorer, default_anchors_path, load_or_create_key
from legguard.engine.journal._store import Durability, Journal

from ._edge import ExitCode, note_trading

# Exit codes (the contract in _edge.py): 0 every package hedged or flat, 1 something still needs an operator.
EXIT_UNSAFE = ExitCode.UNSAFE

RebindOption = Annotated[
    bool,
    typer.Option(
        "--rebind-journal",
        help="Bind the journal to this config's venue and account although it belongs to another (or to none).",
    ),
]


def banner(cfg: RunConfig, db: Path) -> str:
    """Which venue and which money: printed before anything connects."""
    money = ""
    if cfg.venue.kind == "binance":
        money = "  [yellow]TESTNET[/yellow]" if cfg.venue.testnet else "  [bold red]MAINNET: real money[/bold red]"
    return f"legguard: venue {cfg.venue.endpoint}{money}; journal {db}"


def recover(
    config: Annotated[Path, typer.Option("--config", help="TOML config of the run to recover (see examples/).")],
    db: Annotated[Path, typer.Option("--db", help="The journal the crashed run wrote.")] = Path("legguard.db"),
    wait: Annotated[
        float | None,
        typer.Option(
            help="Seconds to wait for the packages to settle (default: 2 x deadlines.ack + deadlines.unwind)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    rebind: RebindOption = False,
) -> None:
    """Recover after a crash: ask the venue about every order of every package not flat, resume each
    package's state machine from the facts until it is hedged or flat, cancel our stray orders, and exit.
    `legguard run` does the same by itself at start. Refuses a journal bound to another venue or account."""
    cfg = load_config(config)
    if wait is not None and not wait > 0:
        raise ConfigError(f"--wait: {wait!r} is invalid; must be > 0")
    if not db.is_file():
        raise ConfigError(f"--db: no journal at {str(db)!r} (nothing to recover; pass the crashed run's --db)")
    claim_socket(socket_path(db))  # an engine running on this journal recovers by itself: never both
    cfg.venue.credentials()  # a missing variable is a config error before anything is opened
    Console(stderr=True, highlight=False, soft_wrap=True).print(banner(cfg, db))
    report = trio.run(partial(_recover, cfg, db, wait, rebind=rebind))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print_recovery(Console(highlight=False, soft_wrap=True), report)
    if not report.ok:
        raise typer.Exit(EXIT_UNSAFE)


async def _recover(cfg: RunConfig, db: Path, wait: float | None, *, rebind: bool = False) -> RecoveryReport:
    durability = Durability.POWER if cfg.durability == "power" else Durability.PROCESS
    journal = Journal.open(db, durability=durability)
    key = load_or_create_key(cfg.anchor_key) if cfg.anchor_key is not None else None
    try:
        async with open_checked_venue(cfg, journal, rebind=rebind) as venue:
            note_trading()
            engine = Engine(venue, journal, cfg.engine)
            async with engine.running():
                report = await settle_recovered(engine, await engine.recover(), wait)
        if key is not None:  # what recovery journaled is anchored like any run's rows
            Anchorer(journal, key, cfg.anchors or default_anchors_path(db)).anchor("recovered")
        return report
    finally:
        journal.close()


def print_recovery(console: Console, report: RecoveryReport) -> None:
    """The report as a table per package, then whatever needs an operator's eyes."""
    if not report.at_restart and not report.unrecoverable and not report.strays:
        console.print("recovery: nothing was left unfinished")
        return
    table = Table(title=f"recovery: {len(report.at_restart)} package(s) the journal left open")
    table.add_column("package", no_wrap=True)
    table.add_column("at restart", no_wrap=True)
    table.add_column("now", no_wrap=True)
    table.add_column("the venue said", overflow="fold")
    for pid, state in report.at_restart.items():
        if pid in report.unproven:
            continue
        final = report.final.get(pid, "?")
        style = "green" if final in ("hedged", "flat") else "red"
        answers = "; ".join(f"{cid}: {text}" for cid, text in report.answers.get(pid, {}).items()) or "-"
        if pid in report.reduced:
            answers += f"; perp reduced by {report.reduced[pid]} while down"
        table.add_row(escape(pid), state, f"[{style}]{final}[/{style}]", escape(answers))
    for pid, error in report.unrecoverable.items():
        table.add_row(escape(pid), "?", "[red]unrecoverable[/red]", escape(error))
    for pid, why in report.unproven.items():
        table.add_row(escape(pid), report.at_restart.get(pid, "?"), "[red]not traded[/red]", escape(why))
    console.print(table)
    for stray in report.strays:
        unwind = f", unwound by {stray['unwind']} ({stray.get('unwind_status', '?')})" if "unwind" in stray else ""
        console.print(
            f"stray order {escape(stray['client_order_id'])} ({stray['symbol']} {stray['side']}, filled "
            f"{stray['filled']}): {escape(stray['outcome'])}{escape(unwind)}"
        )
    for cid, pid in report.lost_orders.items():
        console.print(f"[yellow]{escape(cid)} ({pid}): sent, but the journal had lost it; found and adopted[/yellow]")
    if report.unprobed:
        console.print(f"[red]may exist at the venue, could not be asked:[/red] {escape(', '.join(report.unprobed))}")
    if report.unreachable:
        console.print(f"[yellow]asked again later (venue did not answer):[/yellow] {', '.join(report.unreachable)}")
    if not report.positions_verified:
        console.print("[red]perp positions could not be fetched: hedges unverified[/red]")
    for symbol, qty in report.unexplained_positions.items():
        console.print(f"[red]{symbol}: position {qty} that no package holds — left alone, for an operator[/red]")
    if report.unproven:
        console.print(
            f"[red]{len(report.unproven)} package(s) the venue does not confirm were not traded[/red] "
            "(is this the journal of this venue and account?); new packages stay halted"
        )
    if report.ok:
        console.print("[green]OK[/green] every package hedged or flat")
    else:
        console.print(
            f"[red]NOT SAFE[/red] {escape(json.dumps(report.unsafe))}" if report.unsafe else "[red]CHECK[/red]"
        )
