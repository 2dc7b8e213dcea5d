"""legguard.engine.journal — the audit journal and the proof read back from it.

Map:
- `_store.py`   `Journal`: the append-only, hash-chained SQLite log, written before every effect (write-ahead
                batches, typed writers, readers, the secret guard).
- `_replay.py`  `verify()`: the hash chain plus every package replayed through a fresh core;
                `replay_package()` rebuilds a core for recovery.

Direction: `_replay` reads `_store`; the store knows nothing of replay.
"""

from ._replay import ReplayMismatch as ReplayMismatch
from ._replay import VerifyReport as VerifyReport
from ._replay import replay_package as replay_package
from ._replay import verify as verify
from ._store import Durability as Durability
from ._store import Journal as Journal
from ._store import JournalError as JournalError
from ._store import JournalNotFound as JournalNotFound
from ._store import JournalRow as JournalRow
from ._store import PackageRow as PackageRow
from ._store import UnknownPackage as UnknownPackage
