"""`legguard status | halt | resume | close | stop`: operate a running engine from another terminal, through
the control socket beside its journal (`<db>.sock`). Exit codes: 0 done, 1 the engine refused (unknown
package, nothing it could do), 2 usage, 3 no engine is running on that journal or it cannot be reached."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from legguard.engine.app._control import ControlClient, ControlError, EngineNotRunning, EngineRefused, socket_path

from ._dashboard import render, status_line

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DbOption = Annotated[Path, typer.Option("--db", help="Journal of the running engine (its socket is <db>.sock).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (journaled with the action).")]
DEFAULT_DB = Path("legguard.db")


# Piped into a file or `less`, rich would squeeze wide tables to 80 columns and cut every cell.
PIPE_WIDTH = 240


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH if not sys.stdout.isatty() else None)


def _call(db: Path, cmd: str, **args: Any) -> Any:
    """One request; every failure becomes one line on stderr and the contract's exit code."""
    try:
        with ControlClient(db) as client:
            return client.request(cmd, **args)
    except EngineRefused as exc:
        _err().print(f"[red]refused:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_REFUSED) from None
    except ControlError as exc:
        _err().print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_UNREACHABLE) from None


def status(
    db: DbOption = DEFAULT_DB,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Live dashboard until Ctrl-C or the engine stops (JSON lines if not a terminal)."),
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 1.0,
) -> None:
    """What the running engine is doing: mode, packages, exposure, breaker, venue, dead-man's switch, errors."""
    if not interval > 0:
        _err().print(f"[red]error:[/red] --interval: {interval!r} is invalid; must be > 0")
        raise typer.Exit(EXIT_USAGE)
    if not watch:
        result = _call(db, "status")
        if as_json:
            typer.echo(json.dumps(result, indent=2, sort_keys=True))
        else:
            _out().print(render(result))
        return
    try:
        client = ControlClient(db)
    except ControlError as exc:
        _err().print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    out = _out()
    try:
        if as_json or not out.is_terminal:
            # Not a screen to redraw: one compact JSON line per interval (the same lines `run` writes).
            while True:
                typer.echo(status_line(client.request("status")))
                time.sleep(interval)
        with Live(render(client.request("status")), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(client.request("status")), refresh=True)
    except EngineNotRunning:
        _err().print("engine stopped")
    except ControlError as exc:
        _err().print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


def halt(db: DbOption = DEFAULT_DB, reason: ReasonOption = "operator halt") -> None:
    """Stop taking new packages (unwinds continue, hedges stay). Resume with `legguard resume`."""
    result = _call(db, "halt", reason=reason)
    _out().print(("halted: " if result["done"] else "") + escape(result["result"] if not result["done"] else reason))
    if not result["done"]:
        raise typer.Exit(EXIT_REFUSED)


def resume(db: DbOption = DEFAULT_DB, reason: ReasonOption = "operator resume") -> None:
    """Take new packages again after a halt (operator's or the circuit breaker's)."""
    result = _call(db, "resume", reason=reason)
    _out().print("resumed" if result["done"] else escape(result["result"]))
    if not result["done"]:
        raise typer.Exit(EXIT_REFUSED)


def close(
    package_ids: Annotated[
        list[str] | None, typer.Argument(help="Package id(s) to close (see `legguard status`).")
    ] = None,
    pair: Annotated[str | None, typer.Option("--pair", help="Close every hedged package of this spot symbol.")] = None,
    close_all: Annotated[bool, typer.Option("--all", help="Close every hedged package.")] = False,
    db: DbOption = DEFAULT_DB,
    reason: ReasonOption = "operator close",
) -> None:
    """Close hedged packages through the engine's close path: hedged -> unwinding -> flat (spot sold, perp
    short bought back)."""
    ids = list(package_ids or [])
    if sum((bool(ids), pair is not None, close_all)) != 1:
        _err().print("[red]error:[/red] give PACKAGE_ID(s), or --pair SPOT, or --all (exactly one of them)")
        raise typer.Exit(EXIT_USAGE)
    result = _call(db, "close", ids=ids, pair=pair, all=close_all, reason=reason)
    closing, skipped = result["closing"], result["skipped"]
    out = _out()
    out.print(f"closing {len(closing)} package(s)" + (f": {', '.join(closing)}" if closing else ""))
    for pid, state in skipped.items():
        out.print(f"  {pid}: not closed, it is {state} (only hedged packages close; the kill switch owns the rest)")
    if not result["done"]:
        raise typer.Exit(EXIT_REFUSED)


def stop(
    db: DbOption = DEFAULT_DB,
    reason: ReasonOption = "operator stop",
    wait: Annotated[bool, typer.Option("--wait", help="Return only once the engine has exited.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 120.0,
) -> None:
    """Graceful shutdown, as SIGTERM: entries cancelled, unwinds finished, hedges kept."""
    result = _call(db, "stop", reason=reason)
    _out().print(escape(result["result"]))
    if wait:
        sock = socket_path(db)
        deadline = time.monotonic() + timeout
        while sock.exists():
            if time.monotonic() > deadline:
                _err().print(f"[red]error:[/red] the engine is still running after {timeout:g} s")
                raise typer.Exit(EXIT_UNREACHABLE)
            time.sleep(0.2)
        _out().print("engine stopped")
