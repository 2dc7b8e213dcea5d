"""legguard — the execution engine of a delta-neutral spot/perp desk.

Map (data flows one way; each layer imports only the ones below it):
- `legguard.cli`       typer + rich front: demo, run, recover, audit, fsm, emulator, bench.
- `legguard.engine`    trio actors: supervisor, package actors, venue gateway, recovery, dead-man's switch;
                       `journal/` (the audit journal and its proof), `app/` (config -> running engine),
                       `bench/` (the benchmarks).
- `legguard.adapters`  venues behind one `Venue` protocol: `market/` (matching engine and market generator),
                       `sim/` (in-process venue), `ccxt/` (real exchanges), `emulator/` (Binance on the wire).
- `legguard.fsm`       pure package lifecycle: transition table, decision core, model checker (no I/O).
- `legguard.domain`    the vocabulary at the bottom: orders, sides, statuses, markets, books, venue errors.
"""

__version__ = "0.1.0"
