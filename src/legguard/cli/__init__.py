"""legguard.cli — the typer + rich front.

Map: `_app.py` builds the typer app and registers each command group from its own module
(`_demo.py`, `_audit.py`, `_fsm.py`, `_emulator.py`, `_run.py`, `_bench.py`, `_control.py` for status / halt /
resume / close / stop). `_dashboard.py` draws the status (run's live view, `status --watch`), `_run_view.py`
chooses the live view or JSON status lines, `_logs.py` sets up service logging.
"""

from ._app import app as app
from ._app import main as main
