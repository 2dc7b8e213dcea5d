"""Funding payments attributed to packages: `FundingBook` polls a `FundingVenue`'s payments, splits each one
across the packages that hold the short on its symbol pro rata to their perp quantity, journals one `funding`
row per package (and one engine-wide `funding_payment` row per payment) and adds the parts to each handle's
`funding`.

The journal is the memory: a payment whose `tran_id` is journaled is never booked again, also after a restart.
The first poll on a journal that has never seen funding records what the venue already lists as a
`funding_baseline` (paid before any package of this journal existed: nobody's).

Approximation: a payment is split across the packages holding the short when it is *processed* (polled), not
at the venue's funding time; a package opened or closed between the two is credited or missed accordingly.
The remainder of the split (Decimal, to 1e-8 quote) goes to the largest holder, so the parts sum exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Final

from legguard.adapters._venue import FundingPayment

from ._handle import PackageHandle
from .journal import FUNDING, Journal

log = logging.getLogger("legguard.engine.funding")

# Engine-wide rows (kind `engine`, payload `event`):
FUNDING_PAYMENT: Final = "funding_payment"  # one payment seen, and how it was split
FUNDING_BASELINE: Final = "funding_baseline"  # the payments the venue listed before we watched
UNIT: Final = Decimal("0.00000001")


def split_payment(amount: Decimal, shares: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """`amount` split pro rata to the positive `shares` (package id -> perp short), each part rounded toward
    zero to `UNIT`, the remainder to the largest share (ties: the smallest id). The parts sum to `amount`."""
    held = {pid: q for pid, q in shares.items() if q > 0}
    if not held:
        return {}
    total = sum(held.values(), Decimal(0))
    parts = {pid: (amount * q / total).quantize(UNIT, ROUND_DOWN) for pid, q in sorted(held.items())}
    largest = min(held, key=lambda pid: (-held[pid], pid))
    parts[largest] += amount - sum(parts.values(), Decimal(0))
    return parts


class FundingBook:
    """What the engine knows of funding payments: the tran_ids already journaled."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.seen: set[str] = set()
        self.started = False  # a baseline (or a booked payment) is in the journal
        self.last_ms: int | None = None
        for row in journal.engine_log():
            event = row.payload.get("event")
            if row.kind != "engine" or event not in (FUNDING_PAYMENT, FUNDING_BASELINE):
                continue
            self.started = True
            ids = row.payload.get("tran_ids") if event == FUNDING_BASELINE else [row.payload.get("tran_id")]
            self.seen.update(str(t) for t in ids or [])
            time_ms = row.payload.get("time_ms")
            if isinstance(time_ms, int) and (self.last_ms is None or time_ms > self.last_ms):
                self.last_ms = time_ms

    def baseline(self, payments: Iterable[FundingPayment], now: float) -> None:
        """The first poll on this journal: what the venue lists now is nobody's."""
        listed = list(payments)
        times = [p.time_ms for p in listed]
        self.last_ms = max(times) if times else None
        self.seen.update(p.tran_id for p in listed)
        self.journal.record("engine", None, {"event": FUNDING_BASELINE, "tran_ids": sorted(p.tran_id for p in listed),
                                                     "time_ms": self.last_ms}, now)  # fmt: skip
        self.started = True

    def book(self, payments: Iterable[FundingPayment], handles: Iterable[PackageHandle], now: float) -> int:
        """Book every payment not seen before; returns how many were booked."""
        handles = list(handles)
        booked = 0
        for p in sorted(payments, key=lambda p: (p.time_ms, p.tran_id)):
            if p.tran_id in self.seen:
                continue
            shares = {h.package_id: -h.core.exposure().perp for h in handles if h.core.plan.perp.symbol == p.symbol}
            parts = split_payment(p.amount, shares)
            with self.journal.batch():
                self.journal.record("engine", None, {
                    "event": FUNDING_PAYMENT, "tran_id": p.tran_id, "symbol": p.symbol, "amount": str(p.amount),
                    "time_ms": p.time_ms,
                    "split": {pid: str(a) for pid, a in parts.items()},
                }, now)  # fmt: skip
                for pid, part in parts.items():
                    self.journal.record(FUNDING, pid, {"amount": str(part), "symbol": p.symbol,
                                        "tran_id": p.tran_id, "time_ms": p.time_ms, "payment": str(p.amount)},
                                        now)  # fmt: skip
            by_id = {h.package_id: h for h in handles}
            for pid, part in parts.items():
                by_id[pid].funding += part
            if not parts:
                log.warning("funding %s %s on %s: no package holds the short", p.tran_id, p.amount, p.symbol)
            self.seen.add(p.tran_id)
            if self.last_ms is None or p.time_ms > self.last_ms:
                self.last_ms = p.time_ms
            booked += 1
        return booked
