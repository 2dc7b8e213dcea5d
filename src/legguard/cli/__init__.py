"""legguard.cli — the typer + rich front.

Map: `_app.py` builds the typer app and registers each command group from its own module
(`_demo.py`, `_audit.py`, `_fsm.py`, `_emulator.py`, `_run.py`, `_bench.py`).
"""

from ._app import app as app
from ._app import main as main
