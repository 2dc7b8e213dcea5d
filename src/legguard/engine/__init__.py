"""legguard.engine — the actors that execute packages, on trio.

Map:
- `_spec.py`      PackageSpec / EngineConfig and their validation (SpecError names the field).
- `_pricing.py`   pure pricing from L2 books: maker prices, common step rounding, spread after fees.
- `_engine.py`    `Engine`: the supervisor (nursery of package actors), venue gateway (order stream ->
                  mailboxes by client order id, liquidation attribution, stream-drop reconcile), book
                  watchers, circuit breaker, halt/resume, graceful shutdown.
- `_actor.py`     `PackageActor`: mailbox -> pure core -> journal (write-ahead) -> effects; deadlines as
                  trio cancel scopes; shielded drain to safety on cancellation.
- `_journal.py`   the SQLite hash-chained audit journal: write-ahead batches, typed writers, readers.
- `_anchors.py`   signed checkpoints of the chain head outside the journal (Ed25519); `audit verify --anchors`.
- `_replay.py`    `verify()`: the hash chain plus every package replayed through a fresh core;
                  `replay_package()` rebuilds a core for recovery.
- `_recovery.py`  `Engine.recover()` after a crash: journal + the venue's facts -> every package hedged or
                  flat (`settle_recovered()` waits); strays adopted, unexplained positions reported.
- `_deadman.py`   the perp venue's dead-man's switch (`countdownCancelAll`) while entries rest.
- `_crashpoints.py` `LEGGUARD_CRASH_AT=name[:n]`: SIGKILL at a named point (the crash harness).
- `_strategy.py`  the demo's premium trigger and fault plan.
- `_bench.py`     `legguard bench`: overhead, throughput, journal, memory, medians and targets;
                  `_bench_wire.py` the skew and kill-switch measurements at the socket against the emulator.
"""

from ._actor import InjectedCrash as InjectedCrash
from ._actor import PackageActor as PackageActor
from ._actor import PackageHandle as PackageHandle
from ._engine import Engine as Engine
from ._engine import EngineMode as EngineMode
from ._engine import EngineStats as EngineStats
from ._journal import Durability as Durability
from ._journal import Journal as Journal
from ._journal import JournalError as JournalError
from ._journal import JournalLocked as JournalLocked
from ._journal import JournalRow as JournalRow
from ._journal import PackageRow as PackageRow
from ._pricing import Priced as Priced
from ._pricing import PricingRefused as PricingRefused
from ._pricing import common_step as common_step
from ._pricing import price_package as price_package
from ._recovery import RecoveryReport as RecoveryReport
from ._recovery import settle_recovered as settle_recovered
from ._replay import ReplayMismatch as ReplayMismatch
from ._replay import VerifyReport as VerifyReport
from ._replay import replay_package as replay_package
from ._replay import verify as verify
from ._spec import BreakerConfig as BreakerConfig
from ._spec import Deadlines as Deadlines
from ._spec import DeadmanConfig as DeadmanConfig
from ._spec import EngineConfig as EngineConfig
from ._spec import PackageSpec as PackageSpec
from ._spec import SpecError as SpecError
from ._spec import validate_spec as validate_spec
