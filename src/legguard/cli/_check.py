"""`legguard check --config FILE [--json]`: the preflight alone. Reads only: nothing is ever sent to an order
endpoint. Exit 0 when every check passes, 2 when only the configuration is wrong, 3 when the venue or account
is not ready (the contract in `_edge.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import trio
import typer
from rich.console import Console
from rich.markup import escape

from legguard.engine.app._config import load_config
from legguard.engine.app._preflight import PreflightFailed
from legguard.engine.app._runner import check_venue

from ._edge import ExitCode
from ._recover import banner


def check(
    config: Annotated[Path, typer.Option("--config", help="TOML config to check (see examples/).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as one JSON object.")] = False,
) -> None:
    """Check the venue before trading: reachable, clock, credentials and trading permission on both markets,
    one-way position mode, leverage / margin type, symbols trading, balances for one package per pair."""
    cfg = load_config(config)
    cfg.venue.credentials()  # a missing variable is a config error (exit 2) before anything connects
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if not as_json:
        err.print(banner(cfg, Path("-")).rsplit(";", 1)[0])
    report = trio.run(check_venue, cfg)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        out = Console(highlight=False, soft_wrap=True)
        for c in report.checks:
            mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
            out.print(f"{mark} {escape(c.line())}")
    if not report.ok:
        failed = PreflightFailed(report)
        raise typer.Exit(int(ExitCode.USAGE if failed.config_problem else ExitCode.VENUE))
