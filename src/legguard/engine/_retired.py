"""`RetiredPackages`: what the engine keeps of a package once it is flat, quiescent and its actor has ended.

The journal keeps the package whole; memory keeps only what does not grow with history: counters for the
reports (how many, how many were ever orphaned, realized P&L, fees, funding), the residual each symbol's flat
packages left (dust below what the venue trades: venue truth must still count it), one bit per package number
(was it retired by this engine?) and, for a short while, each retired order's known fill.

Late landings: an order of a flat package that reaches the venue after the package gave up on it must still
be routed and handled (`Engine._late_update`). For `retention` seconds after retirement (at most `max_recent`
packages) the order's known fill answers from memory: the stream's routine late confirmations (a cancel the
REST answer already reported) cost a dictionary look-up. After that, the order id names its package (`lg` +
journal id + package number, see `fsm.client_order_id`) and the package's core is replayed from the journal:
slower, still exact, and never dropped.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from legguard.domain import OrderStatus
from legguard.fsm import OrderFacts, PackageCore

from .journal import PackagePnl
from .journal._replay import ReplayMismatch, replay_package
from .journal._store import Journal, JournalError

log = logging.getLogger("legguard.engine")

ZERO = Decimal(0)
# Recent retirements answered from memory: a stream's late report of an order arrives within a second or two.
RETENTION_SECONDS = 10.0
MAX_RECENT = 2_000


class KnownOrder(NamedTuple):
    """What a retired package's core knew of one of its orders when it was retired."""

    package_id: str
    filled: Decimal
    rejected: bool  # concluded rejected (never found): any later sign of it at the venue is a late landing
    fee_base: Decimal = ZERO  # the fees it knew (a later report of more, for the same fill, is a late fee)
    fee_quote: Decimal = ZERO

    @classmethod
    def of(cls, package_id: str, facts: OrderFacts) -> KnownOrder:
        return cls(package_id, facts.filled, facts.status is OrderStatus.REJECTED, facts.fee_base, facts.fee_quote)


@dataclass(slots=True)
class RetiredTotals:
    """Counters over every retired package (all of them flat)."""

    count: int = 0
    orphaned: int = 0  # ever orphaned on the way
    realized: Decimal = ZERO
    fees_quote: Decimal = ZERO
    funding: Decimal = ZERO


class RetiredPackages:
    """Flat packages released from memory (see the module docstring). Bounded: the per-package cost is one
    bit, plus the recent window (`retention` seconds, at most `max_recent` packages)."""

    def __init__(self, journal: Journal, *, retention: float = RETENTION_SECONDS, max_recent: int = MAX_RECENT) -> None:
        self.journal = journal
        self.retention = retention
        self.max_recent = max_recent
        self.totals = RetiredTotals()
        # Residual exposure of retired packages (dust a flat package may keep), by symbol: venue truth and the
        # reports add it to what the live packages hold.
        self.spot: dict[str, Decimal] = {}  # spot symbol -> base held
        self.perp: dict[str, Decimal] = {}  # perp symbol -> signed position held
        self._bits = bytearray()  # bit n: package number n was retired by this engine
        self._recent: dict[str, KnownOrder] = {}  # client order id -> what its core knew
        self._expiry: deque[tuple[float, tuple[str, ...]]] = deque()  # (retired at, its order ids), oldest first
        self.replays = 0  # late landings answered from the journal (past the recent window)

    def __len__(self) -> int:
        return self.totals.count

    def __contains__(self, package_id: object) -> bool:
        number = _number(package_id[1:]) if isinstance(package_id, str) and package_id[:1] == "P" else None
        return number is not None and self._has(number)

    def retire(self, core: PackageCore, pnl: PackagePnl, orphaned: bool, now: float) -> None:
        """Fold a flat, quiescent package into the counters and the recent window."""
        plan = core.plan
        number = _number(plan.package_id[1:])
        if number is not None:
            byte = number >> 3
            if byte >= len(self._bits):
                self._bits.extend(bytes(byte + 1 - len(self._bits) + len(self._bits) // 2))
            self._bits[byte] |= 1 << (number & 7)
        t = self.totals
        t.count += 1
        t.orphaned += orphaned
        if pnl.realized is not None:
            t.realized += pnl.realized
        t.fees_quote += pnl.fees_quote
        t.funding += pnl.funding
        exp = core.exposure()
        # Every symbol gets an entry, zero or not: venue truth keeps comparing a symbol whose packages all left.
        self.spot[plan.spot.symbol] = self.spot.get(plan.spot.symbol, ZERO) + exp.spot
        self.perp[plan.perp.symbol] = self.perp.get(plan.perp.symbol, ZERO) + exp.perp
        pid = plan.package_id
        for cid, facts in core.orders.items():
            self._recent[cid] = KnownOrder.of(pid, facts)
        self._expiry.append((now, tuple(core.orders)))
        self.expire(now)

    def expire(self, now: float) -> None:
        """Drop recent entries older than `retention`, and the oldest beyond `max_recent` packages."""
        while self._expiry and (now - self._expiry[0][0] >= self.retention or len(self._expiry) > self.max_recent):
            for cid in self._expiry.popleft()[1]:
                self._recent.pop(cid, None)

    def order(self, client_order_id: str, now: float) -> KnownOrder | None:
        """What the retired package that sent `client_order_id` knew of it; None if no retired package of this
        engine sent it (another journal's order, an engine-sent close, a live package's)."""
        self.expire(now)
        known = self._recent.get(client_order_id)
        if known is not None:
            return known
        prefix = f"lg{self.journal.journal_id}"
        head = client_order_id.split("-", 1)[0]
        number = _number(head[len(prefix) :]) if head.startswith(prefix) else None
        if number is None or not self._has(number):
            return None
        package_id = f"P{number:06d}"
        self.replays += 1
        try:
            core = replay_package(self.journal, package_id)
        except (ReplayMismatch, JournalError) as exc:
            # Never silently dropped: as if nothing were known of the order (any fill at all is then late).
            log.error("late order %s: package %s does not replay from the journal: %s", client_order_id,
                      package_id, exc)  # fmt: skip
            return KnownOrder(package_id, ZERO, False)
        facts = core.orders.get(client_order_id)
        if facts is None:
            return KnownOrder(package_id, ZERO, False)
        return KnownOrder.of(package_id, facts)

    def refee(self, client_order_id: str, before: PackagePnl, after: PackagePnl, facts: OrderFacts) -> None:
        """A retired package's order had its fees reported late (`Engine._late_fee`, journaled): the counters
        and the recent window follow."""
        t = self.totals
        t.fees_quote += after.fees_quote - before.fees_quote
        if before.realized is not None and after.realized is not None:
            t.realized += after.realized - before.realized
        # A fee charged in base leaves less spot held: the dust it left is that much smaller.
        self.spot[after.pair] = self.spot.get(after.pair, ZERO) + after.residual_base - before.residual_base
        if client_order_id in self._recent:
            self._recent[client_order_id] = KnownOrder.of(self._recent[client_order_id].package_id, facts)

    def _has(self, number: int) -> bool:
        byte = number >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (number & 7)))

    @property
    def recent_orders(self) -> int:
        return len(self._recent)


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() and text.isascii() else None
