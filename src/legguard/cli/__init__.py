"""legguard.cli — the typer + rich front.

Map: `_app.py` builds the typer app and registers every command in one place; each command is a plain
function in its own module: `_demo.py`, `_run.py`, `_recover.py`, `_check.py` (the preflight alone),
`_emulator.py`, `_audit.py` (a command group), `_fsm.py`, `_bench.py`, `_control.py` (status / halt / resume /
close / stop over the control socket). `_edge.py` is the CLI edge every command runs inside: the exit-code
contract, ExceptionGroups unwrapped to one error line, `--debug`. `_dashboard.py` draws a running engine's
status (run's live view, `status --watch`), `_run_view.py` chooses that view or JSON status lines, `_logs.py`
sets up service logging.
"""

from ._app import app as app
from ._app import main as main
