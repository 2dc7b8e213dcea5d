"""legguard.engine.app — what turns a config file into a running engine, and operates it.

Map:
- `_config.py`    `load_config`: the TOML file validated into `RunConfig` (ConfigError names the key).
- `_strategy.py`  the premium trigger that turns books into package specs, and the demo's fault plan.
- `_runner.py`    `run_engine` / `open_venue`: a venue, a journal and an `Engine` from a `RunConfig`.
- `_demo.py`      `run_demo`: the engine against the embedded simulated market with faults injected.

Builds on the runtime (`legguard.engine`); the runtime never imports this room.
"""
