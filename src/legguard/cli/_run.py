"""`legguard run --config FILE`: trade with the configured venue until --seconds, SIGINT or SIGTERM."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated, Any

import trio
import typer
from rich.console import Console

from legguard.engine._spec import SpecError
from legguard.engine.app._config import ConfigError, load_config
from legguard.engine.app._runner import RunStatus, run_engine

from ._recover import print_recovery


def run(
    config: Annotated[Path, typer.Option("--config", help="TOML config (see examples/).")],
    db: Annotated[Path, typer.Option(help="Journal file (SQLite).")] = Path("legguard.db"),
    seconds: Annotated[float | None, typer.Option(help="Stop gracefully after N seconds (like Ctrl-C).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final summary as JSON.")] = False,
) -> None:
    """Run the engine: packages open on the premium trigger; Ctrl-C cancels entries, finishes unwinds,
    keeps hedges."""
    console = Console(stderr=True)
    try:
        cfg = load_config(config)
        if seconds is not None and not seconds > 0:
            raise ConfigError(f"--seconds: {seconds!r} is invalid; must be > 0")
        status = RunStatus()

        def tick(s: RunStatus) -> None:
            e = s.engine
            if e is not None:
                states = dict(e.final_states())
                console.print(f"[dim]{e.mode.value}[/dim] packages={len(e.handles)} {states}", highlight=False)

        report = trio.run(_with_signals, cfg, db, seconds, status, None if as_json else tick,
                          lambda r: print_recovery(console, r))  # fmt: skip
    except (ConfigError, SpecError) as exc:
        console.print(f"[red]config error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        console.print(report)
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
    cfg: Any, db: Path, seconds: float | None, status: RunStatus, tick: Any, recovered: Any = None
) -> dict[str, Any]:
    async def watch() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                status.stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        report = await run_engine(cfg, db, seconds, status, tick, recovered)
        nursery.cancel_scope.cancel()
    return report
