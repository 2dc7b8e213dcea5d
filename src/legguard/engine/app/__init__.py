"""legguard.engine.app — what turns a config file into a running engine, and operates it.

Map:
- `_config.py`    `load_config`: the TOML file validated into `RunConfig` (ConfigError names the key).
- `_strategy.py`  the `Strategy` protocol (market data, funding, packages, stats in; entries and closes out),
                  the premium trigger, user strategies (`python:module:Class`), the `StrategyDriver` that
                  feeds a strategy from a running engine, and the demo's fault plan.
- `_carry.py`     the funding-rate signal: expected carry plus basis against the round trip's costs.
- `_runner.py`    `run_engine` / `open_venue` / `open_checked_venue`: a venue (opened only past the
                  preflight, and only with a journal bound to it), a journal and an `Engine` from a `RunConfig`.
- `_preflight.py` the checks before the first order (reachable, clock, keys, position mode, leverage,
                  symbols, balances); `legguard check` runs them alone.
- `_demo.py`      `run_demo`: the engine against the embedded simulated market with faults injected.
- `_rpc.py`       `Rpc`: status / halt / resume / close / stop, implemented once, journaled as `control` rows.
- `_control.py`   the control channel: a Unix socket `<db>.sock` (0600), newline-delimited JSON; the CLI client.
- `_metrics.py`   Prometheus metrics on a per-engine registry, served over HTTP from the engine's nursery.
- `_instrument.py` `MeteredVenue`: request latency and errors by endpoint; venue outage detection.
- `_alerts.py`    webhook alerts (json / slack / discord / telegram), bounded queue, deduplicated, rate-limited.

Builds on the runtime (`legguard.engine`); the runtime never imports this room.
"""

# What a user-defined strategy imports (docs/strategy.md).
from ._strategy import Close as Close
from ._strategy import Decisions as Decisions
from ._strategy import Entry as Entry
from ._strategy import FundingView as FundingView
from ._strategy import MarketView as MarketView
from ._strategy import PackageView as PackageView
from ._strategy import Pair as Pair
from ._strategy import StatsView as StatsView
from ._strategy import Strategy as Strategy
from ._strategy import premium as premium
