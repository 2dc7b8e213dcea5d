"""legguard.engine.bench — `legguard bench`: what the engine costs, measured.

Map:
- `_harness.py`  overhead, throughput, journal rate, memory per package; medians, targets, the report.
- `_wire.py`     inter-leg skew and kill-switch reaction at the socket, against the Binance-wire emulator.
- `_quality.py`  execution quality: the naive gather baseline and each execution style on one seeded market.
"""
