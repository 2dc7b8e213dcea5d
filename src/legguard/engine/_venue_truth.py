"""The venue-truth oracle: does the venue agree with the journal's account of it?

One comparison, used by the engine scenario tests, the whole-engine property test, the emulator tests, the
crash harness (through `EmulatorStateBooks`, the emulator's control API in another process) and
`legguard demo`'s exit code. It reads the venue's own books (the matching engine behind the sim venue or the
emulator: every order, balance and position, not what the engine was told) and the journal only (never the
engine's memory), and checks:

- orders: every order at the venue carrying this journal's client-id prefix is known to the journal: a
  package's order with the fills and the open/finished state its replayed core ends with (more fills at the
  venue are accepted only for an order the journal recorded as settled late, whose excess the engine closed),
  or an order the engine sent itself (surplus closes, stray and late-order unwinds). A package order the
  journal believes filled must exist at the venue with those fills.
- positions: every perp position equals the account at the last `venue_baseline` row plus the perp
  exposure of the packages that baseline left out (those it names, and every package created after it).
- balances: every base asset of those packages likewise, to within one quantity step (fee rounding). What
  the venue holds of it is the baseline, plus the spot the open packages hold, plus the desk's dust (what flat
  packages left behind, net of what open packages swept in: `desk_dust`), reported beside each balance; a
  negative dust (packages sold more than they and the dust they swept bought) is a problem of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from legguard.domain import Balance, Market, OrderStatus, OrderUpdate, Side
from legguard.fsm import PackageCore

from .journal._pnl import desk_dust
from .journal._replay import ReplayMismatch, replay_package
from .journal._store import Journal

ZERO = Decimal(0)
# Engine rows naming an order the engine sent itself or adopted (a stray whose fills it closed).
_ENGINE_ORDER_EVENTS = frozenset({"venue_mismatch", "stray_unwind_intent", "adopted_stray_order"})


class VenueBooks(Protocol):
    """The venue's own records: `MatchingEngine` (behind `SimVenue.engine` and `Emulator.engine`)."""

    @property
    def markets(self) -> Mapping[str, Market]: ...

    def all_orders(self, symbol: str | None = None) -> list[OrderUpdate]: ...

    def balances(self) -> dict[str, Balance]: ...

    def positions(self) -> dict[str, Decimal]: ...


@dataclass(slots=True)
class VenueTruth:
    problems: list[str] = field(default_factory=list)
    orders_checked: int = 0
    positions: dict[str, dict[str, str]] = field(default_factory=dict)  # symbol -> venue / journal
    balances: dict[str, dict[str, str]] = field(default_factory=dict)  # asset -> venue / journal

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "orders_checked": self.orders_checked,
            "positions": self.positions,
            "balances": self.balances,
        }


_WIRE_STATUS: Mapping[str, OrderStatus] = {
    "NEW": OrderStatus.OPEN,
    "PARTIALLY_FILLED": OrderStatus.OPEN,
    "FILLED": OrderStatus.CLOSED,
    "CANCELED": OrderStatus.CANCELED,
    "EXPIRED": OrderStatus.EXPIRED,
    "EXPIRED_IN_MATCH": OrderStatus.EXPIRED,
    "REJECTED": OrderStatus.REJECTED,
}


@dataclass(frozen=True, slots=True)
class EmulatorStateBooks:
    """The emulator's books as its control API shows them (`GET /_emulator/state`), for a caller in another
    process (the crash harness). Binance USDT markets only: `ETHUSDT` is `ETH/USDT` or `ETH/USDT:USDT`."""

    state: Mapping[str, Any]

    @property
    def markets(self) -> Mapping[str, Market]:
        return {}  # the oracle then takes the base asset from the symbol

    @staticmethod
    def _unified(venue_symbol: str, linear: bool) -> str:
        base = venue_symbol.removesuffix("USDT")
        return f"{base}/USDT:USDT" if linear else f"{base}/USDT"

    def all_orders(self, symbol: str | None = None) -> list[OrderUpdate]:
        out: list[OrderUpdate] = []
        for market, linear in (("spot", False), ("linear", True)):
            for o in self.state[market]["orders"]:
                unified = self._unified(str(o["symbol"]), linear)
                if symbol is not None and unified != symbol:
                    continue
                out.append(OrderUpdate(str(o["clientOrderId"]), unified, Side(str(o["side"]).lower()),
                                       _WIRE_STATUS[str(o["status"])], Decimal(str(o["origQty"])),
                                       Decimal(str(o["executedQty"]))))  # fmt: skip
        return out

    def balances(self) -> dict[str, Balance]:
        return {a: Balance(Decimal(b["free"]), Decimal(b["locked"])) for a, b in self.state["spot"]["balances"].items()}

    def positions(self) -> dict[str, Decimal]:
        return {self._unified(s, True): Decimal(q) for s, q in self.state["linear"]["positions"].items()}


def compare_venue(books: VenueBooks, journal: Journal) -> VenueTruth:
    """Compare the venue's books with the journal's account of them (see the module docstring)."""
    out = VenueTruth()
    prefix = f"lg{journal.journal_id}"
    baseline_row = None
    for row in journal.engine_log():
        if row.payload.get("event") == "venue_baseline":
            baseline_row = row
    if baseline_row is None:
        out.problems.append("journal: no venue_baseline row (the engine never recorded what the account held)")
        return out
    counted = set(baseline_row.payload.get("packages") or [])
    cores: dict[str, PackageCore] = {}
    for pid in journal.package_ids():
        try:
            cores[pid] = replay_package(journal, pid)
        except ReplayMismatch as exc:
            out.problems.append(f"journal: package {pid} does not replay: {exc}")
            continue
        timeline = journal.timeline(pid)
        if timeline and timeline[0].seq > baseline_row.seq:
            counted.add(pid)
    engine_orders: set[str] = set()
    settled_late: set[str] = set()
    for row in journal.engine_log():
        event = row.payload.get("event")
        if event in _ENGINE_ORDER_EVENTS and row.payload.get("client_order_id"):
            engine_orders.add(str(row.payload["client_order_id"]))
        elif event == "late_order_settled":
            settled_late.add(str(row.payload["client_order_id"]))
    _orders(out, books.all_orders(), cores, prefix, engine_orders, settled_late)
    _holdings(out, books, cores, counted, baseline_row.payload)
    return out


def _orders(
    out: VenueTruth,
    venue_orders: Iterable[OrderUpdate],
    cores: Mapping[str, PackageCore],
    prefix: str,
    engine_orders: set[str],
    settled_late: set[str],
) -> None:
    facts = {cid: (pid, o) for pid, core in cores.items() for cid, o in core.orders.items()}
    seen: set[str] = set()
    for order in venue_orders:
        cid = order.client_order_id
        if not cid.startswith(prefix):
            continue  # not ours (another client of the account, or the venue's own liquidation orders)
        out.orders_checked += 1
        seen.add(cid)
        if cid in engine_orders or cid.removesuffix("-X") in settled_late or cid.removesuffix("-X") in engine_orders:
            continue  # sent by the engine itself, journaled before it was sent
        known = facts.get(cid)
        if known is None:
            out.problems.append(
                f"order {cid}: at the venue ({order.status.value} {order.filled}), unknown to the journal"
            )
            continue
        pid, f = known
        if order.filled != f.filled and not (cid in settled_late and order.filled > f.filled):
            out.problems.append(
                f"order {cid} of {pid}: venue filled {order.filled}, journal {f.filled} ({f.status.value})"
            )
        if order.status is OrderStatus.OPEN and not f.live:
            out.problems.append(f"order {cid} of {pid}: open at the venue, journal says {f.status.value}")
    for cid, (pid, f) in facts.items():
        if cid not in seen and f.filled > 0:
            out.problems.append(f"order {cid} of {pid}: journal has it filled {f.filled}, the venue has no such order")


def _holdings(
    out: VenueTruth,
    books: VenueBooks,
    cores: Mapping[str, PackageCore],
    counted: set[str],
    baseline: Mapping[str, Any],
) -> None:
    markets = books.markets
    perp_expected: dict[str, Decimal] = {s: Decimal(v) for s, v in (baseline.get("perp") or {}).items()}
    spot_expected: dict[str, Decimal] = {}
    steps: dict[str, Decimal] = {}
    bases: set[str] = set()
    for pid in counted:
        core = cores.get(pid)
        if core is None:
            continue
        exp = core.exposure()
        spot_market = markets.get(core.plan.spot.symbol)
        base = spot_market.base if spot_market is not None else core.plan.spot.symbol.split("/")[0]
        bases.add(base)
        steps[base] = core.plan.spot.step
        spot_expected[base] = spot_expected.get(base, ZERO) + exp.spot
        perp_expected[core.plan.perp.symbol] = perp_expected.get(core.plan.perp.symbol, ZERO) + exp.perp
        if exp.unknown:
            out.problems.append(f"package {pid}: the journal ends with an order outcome unknown")
    positions = books.positions()
    for symbol in sorted(set(perp_expected) | {s for s, q in positions.items() if q != 0}):
        venue, journal = positions.get(symbol, ZERO), perp_expected.get(symbol, ZERO)
        out.positions[symbol] = {"venue": str(venue), "journal": str(journal)}
        if venue != journal:
            out.problems.append(f"position {symbol}: venue {venue}, journal accounts for {journal}")
    balances = books.balances()
    spot_baseline = baseline.get("spot") or {}
    dust = desk_dust((c.plan.spot.symbol, c.state, c.exposure().spot, c.plan.sweep) for c in cores.values())
    for base in sorted(bases):
        venue = balances[base].total if base in balances else ZERO
        journal = Decimal(spot_baseline.get(base, "0")) + spot_expected.get(base, ZERO)
        out.balances[base] = {"venue": str(venue), "journal": str(journal), "dust": str(dust.get(base, ZERO))}
        if abs(venue - journal) >= steps[base]:
            out.problems.append(f"balance {base}: venue {venue}, journal accounts for {journal}")
        if dust.get(base, ZERO) <= -steps[base]:
            out.problems.append(f"dust {base}: {dust[base]}: the packages sold more than they (and the dust they "
                                "swept in) bought")  # fmt: skip
