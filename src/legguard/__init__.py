"""legguard — the execution engine of a delta-neutral spot/perp desk.

Map (data flows one way, top to bottom):
- `legguard.fsm`       pure package lifecycle: transition table, decision core (no I/O).
- `legguard.engine`    trio actors: supervisor, package actors, venue gateway, journal, pricing, risk.
- `legguard.adapters`  venues behind one `Venue` protocol: simulated venue, matching engine, ccxt, emulator.
- `legguard.cli`       typer + rich front: demo, run, audit, fsm, emulator, bench.
"""

__version__ = "0.1.0"
