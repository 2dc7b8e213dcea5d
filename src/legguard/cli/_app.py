"""The `legguard` command: one typer app, and the one place that registers every command on it. Each command
lives in its own module as a plain function and knows nothing of the app."""

from __future__ import annotations

import typer

from ._audit import audit_app
from ._bench import bench
from ._demo import demo
from ._emulator import emulator
from ._fsm import fsm
from ._recover import recover
from ._run import run

app = typer.Typer(
    name="legguard",
    help="Execution engine for delta-neutral spot/perp trade packages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold credentials
)

for command in (bench, demo, emulator, fsm, recover, run):
    app.command()(command)
app.add_typer(audit_app, name="audit")


def main() -> None:
    app()
