"""The `legguard` command: one typer app; each command lives in its own module and registers here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="legguard",
    help="Execution engine for delta-neutral spot/perp trade packages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold credentials
)


def main() -> None:
    app()


# --- command registration: each command module adds itself here --------------------------------------
# (imports follow `app` on purpose: each module decorates commands onto it)
from . import _bench, _control, _demo, _emulator, _fsm, _recover, _run  # noqa: E402, F401
from ._audit import audit_app  # noqa: E402

app.add_typer(audit_app, name="audit")
