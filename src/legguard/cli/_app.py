"""The `legguard` command: one typer app, and the one place that registers every command on it. Each command
lives in its own module as a plain function and knows nothing of the app. Every command's errors pass
through `EdgeGroup` (`_edge.py`): one line on stderr, one exit code of the contract."""

from __future__ import annotations

import inspect
import sys
from typing import Annotated

import typer

from ._audit import audit_app
from ._bench import bench
from ._check import check
from ._control import close, halt, resume, status, stop
from ._demo import demo
from ._edge import STATE, EdgeGroup
from ._emulator import emulator
from ._fsm import fsm
from ._recover import recover
from ._run import run

app = typer.Typer(
    name="legguard",
    cls=EdgeGroup,  # every command's errors: one line, one exit code (see _edge.py)
    help="Execution engine for delta-neutral spot/perp trade packages. Exit codes: 0 done and every package "
    "hedged or flat; 1 something left unsafe or unexplained; 2 usage or config error; 3 venue refused or "
    "unreachable before trading.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # errors are one line (EdgeGroup); --debug prints the traceback
    pretty_exceptions_show_locals=False,  # locals may hold credentials
)


def _flowed(doc: str | None) -> str | None:
    """A docstring as help: its paragraphs kept, the line breaks inside each one joined, so the terminal wraps
    them to its own width (rich's help printed each source line break as is, mid-sentence, and rewrapped each
    ~110-character source line on its own)."""
    if not doc:
        return doc
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


for command in (bench, check, demo, emulator, fsm, recover, run, status, halt, resume, close, stop):
    app.command()(command)
app.add_typer(audit_app, name="audit")
for info in (*app.registered_commands, *audit_app.registered_commands):
    if info.help is None and info.callback is not None:
        info.help = _flowed(info.callback.__doc__)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", envvar="LEGGUARD_DEBUG", help="Print the full traceback of an error.")
    ] = False,
) -> None:
    STATE.debug = debug


def main() -> None:
    # `legguard run ... --debug` reads as naturally as `legguard --debug run ...`: accept both.
    args = sys.argv[1:]
    if "--debug" in args and "--" not in args:
        args = ["--debug", *(a for a in args if a != "--debug")]
    app(args=args)
