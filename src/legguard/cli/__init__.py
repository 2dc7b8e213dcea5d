"""legguard.cli — the typer + rich front.

Map: `_app.py` builds the typer app and registers every command in one place; each command is a plain
function in its own module: `_demo.py`, `_run.py`, `_recover.py`, `_emulator.py`, `_audit.py` (a command
group), `_fsm.py`, `_bench.py`.
"""

from ._app import app as app
from ._app import main as main
