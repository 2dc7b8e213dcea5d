"""`legguard run --config FILE`: trade with the configured venue until --seconds, SIGINT or SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import signal
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import trio
import typer
from rich.console import Console

from legguard.engine.app._config import ConfigError, load_config
from legguard.engine.app._runner import RunStatus, run_engine

from ._edge import note_trading
from ._recover import RebindOption, banner, print_recovery


def run(
    config: Annotated[Path, typer.Option("--config", help="TOML config (see examples/).")],
    db: Annotated[Path, typer.Option(help="Journal file (SQLite).")] = Path("legguard.db"),
    seconds: Annotated[float | None, typer.Option(help="Stop gracefully after N seconds (like Ctrl-C).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final summary as JSON.")] = False,
    rebind: RebindOption = False,
    anchor_key: Annotated[
        Path | None,
        typer.Option(
            "--anchor-key",
            help="Ed25519 key file (outside the journal; created 0600 if absent) that signs the journal's head "
            "(overrides journal.anchor_key). The key is never printed.",
        ),
    ] = None,
    anchors: Annotated[
        Path | None,
        typer.Option(
            "--anchors", help="Append-only file of signed anchors (overrides journal.anchors; default <db>.anchors)."
        ),
    ] = None,
) -> None:
    """Run the engine: preflight checks first (nothing is sent if one fails), then packages open on the
    premium trigger; Ctrl-C cancels entries, finishes unwinds, keeps hedges."""
    console = Console(stderr=True)
    cfg = load_config(config)
    if anchor_key is not None:
        cfg = dataclasses.replace(cfg, anchor_key=anchor_key)
    if anchors is not None:
        cfg = dataclasses.replace(cfg, anchors=anchors)
    if seconds is not None and not seconds > 0:
        raise ConfigError(f"--seconds: {seconds!r} is invalid; must be > 0")
    cfg.venue.credentials()  # a missing variable is a config error before anything is opened
    console.print(banner(cfg, db), highlight=False)
    status = RunStatus()

    def tick(s: RunStatus) -> None:
        e = s.engine
        if e is not None:
            states = dict(e.final_states())
            console.print(f"[dim]{e.mode.value}[/dim] packages={len(e.handles)} {states}", highlight=False)

    report = trio.run(
        partial(
            _with_signals, cfg, db, seconds, status, None if as_json else tick, lambda r: print_recovery(console, r),
            rebind=rebind,
        )
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        console.print(report)
    check = report.get("venue_check") or {"ok": True, "problems": []}
    if not check["ok"]:
        console.print("[red]VENUE DISAGREES WITH THE JOURNAL:[/red]")
        for problem in check["problems"][:20]:
            console.print(f"  {problem}", markup=False)
        raise typer.Exit(1)
    unsafe = report.get("needs_recovery") or {}
    if report.get("needs_operator"):
        console.print(f"[red]NOT SAFE[/red] recovery found: {report['needs_operator']}", highlight=False)
        if not unsafe:
            raise typer.Exit(1)
    if unsafe:
        why = "the venue was still unreachable at exit; " if report.get("venue_down_at_exit") else ""
        listed = ", ".join(f"{pid} ({state})" for pid, state in unsafe.items())
        hint = f"run `legguard recover --config {config} --db {db}` once the venue answers"
        console.print(f"[red]NOT SAFE[/red] {why}{len(unsafe)} package(s) need recovery: {listed}; {hint}",
                      highlight=False)  # fmt: skip
        raise typer.Exit(1)


async def _with_signals(
    cfg: Any, db: Path, seconds: float | None, status: RunStatus, tick: Any, recovered: Any = None, *, rebind: bool
) -> dict[str, Any]:
    async def watch() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                status.stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        report = await run_engine(cfg, db, seconds, status, tick, recovered, rebind=rebind, on_trading=note_trading)
        nursery.cancel_scope.cancel()
    return report
