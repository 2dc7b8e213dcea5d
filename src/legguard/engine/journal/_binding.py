"""A journal belongs to one venue and one account.

On first use the engine journals a `binding` row (hash-chained like every other row): the venue kind, the
endpoint set (`sim`, `emulator http://...`, `binance testnet` / `binance mainnet`) and an account fingerprint
that holds no secret (a SHA-256 of the API key salted with the journal id, so it cannot be matched across
journals). `run`, `recover` and `demo` refuse a journal bound to another venue or account, naming both;
`--rebind-journal` is the only way to bind it again (journaled too, with the binding it replaced).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._store import Journal

BINDING_KIND = "binding"
SIM_ACCOUNT = "sim"


class BindingMismatch(Exception):
    """The journal belongs to another venue or account (or to none, while holding packages)."""


@dataclass(frozen=True, slots=True)
class VenueIdentity:
    kind: str
    endpoint: str
    account: str

    def describe(self) -> str:
        return f"{self.endpoint} (account {self.account})"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "endpoint": self.endpoint, "account": self.account}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VenueIdentity:
        return cls(str(data.get("kind")), str(data.get("endpoint")), str(data.get("account")))


def account_fingerprint(api_key: str, journal_id: str) -> str:
    digest = hashlib.sha256(f"legguard-account:{journal_id}:{api_key}".encode()).hexdigest()
    return f"key-sha256:{digest[:16]}"


SIM_IDENTITY = VenueIdentity("sim", "sim", SIM_ACCOUNT)


def bound_identity(journal: Journal) -> VenueIdentity | None:
    """The journal's current binding (its last `binding` row), or None if it was never bound."""
    rows = [r for r in journal.engine_log() if r.kind == BINDING_KIND]
    return VenueIdentity.from_dict(rows[-1].payload["identity"]) if rows else None


def check_binding(journal: Journal, identity: VenueIdentity, *, rebind: bool = False) -> VenueIdentity | None:
    """Refuse (BindingMismatch) a journal bound elsewhere unless `rebind`. Returns the binding to replace
    (None if the journal is unbound); call `record_binding` once the venue has passed its preflight."""
    bound = bound_identity(journal)
    where = f"journal {journal.journal_id} ({journal.path})"
    if bound == identity or rebind:
        return bound
    if bound is None:
        held = len(journal.package_ids())
        if held == 0:
            return None
        raise BindingMismatch(
            f"{where} holds {held} package(s) but records no venue (written before journals were bound?): "
            f"legguard cannot tell whose orders they are; if they were placed on {identity.describe()}, pass "
            "--rebind-journal, otherwise use another --db"
        )
    raise BindingMismatch(
        f"{where} belongs to {bound.describe()}, not to {identity.describe()}: use this venue's own journal "
        "(--db PATH), or pass --rebind-journal if it really is the same account"
    )


def record_binding(journal: Journal, identity: VenueIdentity, previous: VenueIdentity | None, mono: float) -> bool:
    """Journal the binding unless it is already the current one; True if a row was written."""
    if bound_identity(journal) == identity:
        return False
    # "event" like every engine-wide row, so readers of the engine log can tell rows apart the same way.
    payload: dict[str, Any] = {"event": "rebound" if previous is not None else "bound", "identity": identity.to_dict()}
    if previous is not None:
        payload["replaces"] = previous.to_dict()
    journal.record(BINDING_KIND, None, payload, mono)
    return True
