"""legguard.engine.journal — the audit journal and the proof read back from it.

Map:
- `_store.py`   `Journal`: the append-only, hash-chained SQLite log, written before every effect (write-ahead
                batches, typed writers, readers, the secret guard).
- `_replay.py`  `verify()`: the hash chain plus every package replayed through a fresh core (and every
                journaled `pnl` recomputed); `replay_package()` rebuilds a core for recovery.
- `_ledger.py`  `ledger()`: every package's accounting rebuilt from the journal, with its exit reason;
                `aggregate()` by pair, day or exit reason, `dust()` per asset (`legguard audit pnl`), what is
                held valued at marks (`journal_marks()`: the last fill prices); `unattributed_funding()`: paid
                while nobody held.
- `_anchors.py` signed checkpoints (Ed25519) of the chain head, kept outside the journal: `Anchorer` writes
                them, `verify_anchors()` (`audit verify --anchors`) checks the journal still extends them.
- `_pnl.py`     per-package accounting from the core's order facts: VWAPs, fees by currency, funding,
                slippage, realized P&L (`package_pnl`); the desk's base dust (`desk_dust`); pure, used live
                and by `audit pnl` / `verify`.
- `_binding.py` a journal belongs to one venue and one account: the `binding` row, checked by run/recover.

Direction: `_ledger` → `_replay` → `_store`, `_pnl`; `_anchors` → `_store`; the store knows nothing of replay,
accounting or anchors.
"""

from ._ledger import GROUPINGS as GROUPINGS
from ._ledger import LedgerEntry as LedgerEntry
from ._ledger import Mark as Mark
from ._ledger import aggregate as aggregate
from ._ledger import dust as dust
from ._ledger import journal_marks as journal_marks
from ._ledger import ledger as ledger
from ._ledger import unattributed_funding as unattributed_funding
from ._pnl import FUNDING as FUNDING
from ._pnl import LATE_FEE as LATE_FEE
from ._pnl import PNL as PNL
from ._pnl import PackagePnl as PackagePnl
from ._pnl import desk_dust as desk_dust
from ._pnl import funding_amount as funding_amount
from ._pnl import package_pnl as package_pnl
from ._replay import ReplayMismatch as ReplayMismatch
from ._replay import VerifyReport as VerifyReport
from ._replay import replay_package as replay_package
from ._replay import verify as verify
from ._store import CANCEL_ARMED as CANCEL_ARMED
from ._store import Durability as Durability
from ._store import EncodedStep as EncodedStep
from ._store import Journal as Journal
from ._store import JournalError as JournalError
from ._store import JournalLocked as JournalLocked
from ._store import JournalNotFound as JournalNotFound
from ._store import JournalRow as JournalRow
from ._store import PackageRow as PackageRow
from ._store import UnknownPackage as UnknownPackage
