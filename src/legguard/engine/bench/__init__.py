"""legguard.engine.bench — `legguard bench`: what the engine costs, measured.

Map:
- `_harness.py`  overhead (and its path stamped phase by phase), throughput (and its CPU by area, profiled),
                 journal rate, memory per live and per finished package; medians, the issue's target table
                 with each measure's floor.
- `_floors.py`   what this machine cannot do faster, in the same run: loopback `send()`, bare SQLite commits
                 (each durability), ccxt `sign()`; which floor bounds which latency.
- `_wire.py`     inter-leg skew and kill-switch reaction at the socket, against the Binance-wire emulator.
- `_quality.py`  execution quality: the naive gather baseline and each execution style on one seeded market.
"""
