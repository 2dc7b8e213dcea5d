"""`legguard run --config FILE`: trade with the configured venue until --seconds, SIGINT, SIGTERM or
`legguard stop`; serves the control socket, and metrics and alerts when configured."""

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
from legguard.engine.app._runner import RunOptions, RunStatus, run_engine

from ._edge import note_trading
from ._logs import LEVELS, setup_logging
from ._recover import RebindOption, banner, print_recovery
from ._run_view import RunView


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
    metrics_port: Annotated[
        int | None,
        # "\\[": rich reads a bare "[metrics]" in a help text as a style tag and prints nothing of it.
        typer.Option(help="Serve Prometheus metrics on this port (overrides the config's \\[metrics] port; 0: any)."),
    ] = None,
    log_file: Annotated[Path | None, typer.Option(help="Also write JSON log lines here (rotated by size).")] = None,
    log_level: Annotated[str, typer.Option(help=f"One of {', '.join(LEVELS)}.")] = "info",
    status_interval: Annotated[
        float, typer.Option(help="Outside a terminal: seconds between JSON status lines on stderr.")
    ] = 10.0,
) -> None:
    """Run the engine: preflight checks first (nothing is sent if one fails), then packages open on the
    premium trigger; Ctrl-C cancels entries, finishes unwinds, keeps hedges. Operate it from another terminal
    with `legguard status | halt | resume | close | stop`."""
    console = Console(stderr=True)
    if log_level.lower() not in LEVELS:
        raise ConfigError(f"--log-level: {log_level!r} is invalid; allowed: {', '.join(LEVELS)}")
    if not status_interval > 0:
        raise ConfigError(f"--status-interval: {status_interval!r} is invalid; must be > 0")
    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        raise ConfigError(f"--metrics-port: {metrics_port!r} is invalid; must be 0..65535")
    cfg = load_config(config)
    if anchor_key is not None:
        cfg = dataclasses.replace(cfg, anchor_key=anchor_key)
    if anchors is not None:
        cfg = dataclasses.replace(cfg, anchors=anchors)
    if seconds is not None and not seconds > 0:
        raise ConfigError(f"--seconds: {seconds!r} is invalid; must be > 0")
    cfg.venue.credentials()  # a missing variable is a config error before anything is opened
    setup_logging(log_level.lower(), log_file)
    console.print(banner(cfg, db), highlight=False)
    status = RunStatus()
    view = RunView(console, live=console.is_terminal and not as_json, interval=status_interval)
    options = RunOptions(metrics_port=metrics_port, tick_interval=view.tick_interval)
    with view:
        report = trio.run(
            partial(
                _with_signals, cfg, db, seconds, status, view.tick, lambda r: print_recovery(console, r), options,
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
    cfg: Any,
    db: Path,
    seconds: float | None,
    status: RunStatus,
    tick: Any,
    recovered: Any = None,
    options: RunOptions | None = None,
    *,
    rebind: bool,
) -> dict[str, Any]:
    async def watch() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                status.stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        report = await run_engine(cfg, db, seconds, status, tick, recovered, options, rebind=rebind,
                                  on_trading=note_trading)  # fmt: skip
        nursery.cancel_scope.cancel()
    return report
