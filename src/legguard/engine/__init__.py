"""legguard.engine — the actors that execute packages, on trio.

Map:
- `_spec.py`        PackageSpec / EngineConfig and their validation (SpecError names the field).
- `_pricing.py`     pure pricing from L2 books: maker prices, common step rounding, spread after fees;
                    `PriceMemo`, the last package's pricing and sizing, reused while both books stand.
- `_engine.py`      `Engine`: the supervisor (nursery of package actors), venue gateway (order stream ->
                    mailboxes by client order id, liquidation attribution, stream-drop reconcile), book
                    watchers, circuit breaker, halt/resume, graceful shutdown.
- `_host.py`        `EngineHost`: the small interface the engine offers the parts it runs (actor, recovery,
                   dead-man), so none of them imports the engine back; `EngineStats`; `Timers` (one task runs
                   every package's fill deadline).
- `_group.py`       `GroupCommit`: the journal rows of every actor step of one scheduler round commit in one
                   transaction before any of their effects is released (write-ahead, grouped).
- `_handle.py`      `PackageHandle`: a package's mailbox (`Mailbox`), event log and timing facts across actor
                   restarts.
- `_retired.py`     `RetiredPackages`: what stays in memory of a flat package once released (counters, dust,
                   late-landing routing: recent order fills, then the journal); memory bounded by what is live.
- `_actor.py`       `PackageActor`: mailbox -> pure core -> journal (write-ahead) -> effects; deadlines as
                    trio cancel scopes; shielded drain to safety on cancellation.
- `_recovery.py`    `Engine.recover()` after a crash: journal + the venue's facts -> every package hedged or
                    flat (`settle_recovered()` waits); strays adopted, unexplained positions reported.
- `_exits.py`       from entry to exit: the exit policy (basis, holding time, loss limit), the margin guard,
                    and the inventory / balance limits checked before every entry (`[exit]`, `[risk]`).
- `_funding.py`     `FundingBook`: a venue's funding payments split pro rata across the packages holding the
                    short, journaled once per tran_id (`funding` rows), added to each handle's funding.
- `_deadman.py`     the perp venue's dead-man's switch (`countdownCancelAll`) while entries rest.
- `_outage.py`      `VenueWatch`: is the venue answering? No new packages while it is not; deadlines and
                    queries wait; every live order and position reconciled when it answers again.
- `_warm.py`        `HotPathWarmer` (`engine.keep_warm`, off by default): while the engine waits, runs the
                    decision core on a shadow of the latest package, so a shared host's caches hold it.
- `_crashpoints.py` `LEGGUARD_CRASH_AT=name[:n]`: SIGKILL at a named point (the crash harness).
- `_venue_truth.py` the venue-truth oracle: every order, balance and position in the venue's own books
                    against the journal's account (tests, property test, crash harness, `legguard demo`'s exit code).
- `_observe.py`     `EngineObserver`: the hooks metrics and alerts implement (transition, halt, resume, ...);
                    `HaltSource`.
- `journal/`        the SQLite hash-chained audit journal (`_store.py`) and its proof: replay and verify
                    (`_replay.py`).
- `app/`            what turns a config file into a running engine: config, strategy, runner, demo.
- `bench/`          `legguard bench`: overhead, throughput, journal, memory; skew and kill switch at the socket.

Direction: `app`, `bench` → `_engine` → `_recovery`, `_deadman`, `_outage`, `_exits`, `_retired`, `_warm` → `_actor` →
`_host` → `_group`, `_handle`, `journal`.
"""

from ._actor import InjectedCrash as InjectedCrash
from ._actor import PackageActor as PackageActor
from ._engine import Engine as Engine
from ._engine import EngineMode as EngineMode
from ._handle import PackageHandle as PackageHandle
from ._host import EngineHost as EngineHost
from ._host import EngineStats as EngineStats
from ._pricing import Priced as Priced
from ._pricing import PricingRefused as PricingRefused
from ._pricing import common_step as common_step
from ._pricing import price_package as price_package
from ._recovery import RecoveryReport as RecoveryReport
from ._recovery import settle_recovered as settle_recovered
from ._spec import BreakerConfig as BreakerConfig
from ._spec import Deadlines as Deadlines
from ._spec import DeadmanConfig as DeadmanConfig
from ._spec import EngineConfig as EngineConfig
from ._spec import ExitConfig as ExitConfig
from ._spec import PackageSpec as PackageSpec
from ._spec import RiskConfig as RiskConfig
from ._spec import SpecError as SpecError
from ._spec import validate_spec as validate_spec
from .journal import Durability as Durability
from .journal import Journal as Journal
from .journal import JournalError as JournalError
from .journal import JournalRow as JournalRow
from .journal import PackageRow as PackageRow
from .journal import ReplayMismatch as ReplayMismatch
from .journal import VerifyReport as VerifyReport
from .journal import replay_package as replay_package
from .journal import verify as verify
