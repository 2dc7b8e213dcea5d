"""The journal's ledger: every package's accounting (`_pnl.py`) rebuilt from its journaled facts, with when it
opened and closed and why it closed; and the aggregates `legguard audit pnl` prints (by pair, day or exit
reason), with what is still held (hedges, dust) valued at marks: given ones, or the journal's last fill prices.

Reconciliation with the venue (docs/accounting.md): over the packages of a journal, the total `value` plus
the funding nobody held (`unattributed_funding`) is the change of the account's value in quote at those marks
(spot quote + perp wallet + unrealized perp P&L + base held x spot mark), to 1e-8 quote per filled order."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from legguard.domain import ZERO
from legguard.fsm import LegRole, State

from ._pnl import FUNDING, PackagePnl, assets_of, desk_dust, funding_amount, package_pnl
from ._replay import replay_package
from ._store import EVENT, TRANSITION, Journal

FUNDING_PAYMENT: Final = "funding_payment"  # the engine row of one payment and its split (engine/_funding.py)

GROUPINGS: Final = ("pair", "day", "exit-reason")


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    pnl: PackagePnl
    opened_wall: float
    closed_wall: float | None  # when it went flat
    exit_reason: str  # open | void | kill_switch | flat | close:<policy> (basis, max_hold, operator, ...)
    sweep: Decimal = ZERO  # desk dust the package took over (`PackagePlan.sweep`)
    spot_mark: Decimal | None = None  # the price of its last spot fill
    spot_held: Decimal = ZERO  # base its own spot fills hold, net of fees in base (`Exposure.spot`)

    @property
    def day(self) -> str:
        return dt.datetime.fromtimestamp(self.closed_wall or self.opened_wall, tz=dt.UTC).strftime("%Y-%m-%d")

    def key(self, by: str) -> str:
        if by == "pair":
            return self.pnl.pair
        if by == "day":
            return self.day
        if by == "exit-reason":
            return self.exit_reason
        raise ValueError(f"by: {by!r} is not one of {', '.join(GROUPINGS)}")


def ledger(journal: Journal, since: float | None = None) -> list[LedgerEntry]:
    """Every package opened at or after `since` (wall time, seconds), oldest first. Raises ReplayMismatch when
    a package's journal does not replay (run `legguard audit verify`)."""
    out: list[LedgerEntry] = []
    for row in journal.packages():
        if since is not None and row.created_wall < since:
            continue
        core = replay_package(journal, row.package_id)
        funding = ZERO
        closed: float | None = None
        close_reason: str | None = None
        orphaned = False
        for r in journal.timeline(row.package_id):
            if r.kind == FUNDING:
                funding += funding_amount(r.payload)
            elif r.kind == EVENT and r.payload.get("kind") == "close_requested":
                close_reason = close_reason or str(r.payload.get("policy") or "operator")
            elif r.kind == TRANSITION:
                orphaned = orphaned or r.payload.get("dest") == State.ORPHANED.value
                if r.payload.get("dest") == State.FLAT.value:
                    closed = r.wall_time
        pnl = package_pnl(core, funding)
        if core.state is not State.FLAT:
            reason = "open"
        elif close_reason is not None:
            reason = f"close:{close_reason}"
        elif orphaned:
            reason = "kill_switch"
        elif pnl.spot.entry_qty == 0 and pnl.perp.entry_qty == 0:
            reason = "void"
        else:
            reason = "flat"
        marks = [o.average for o in core.leg_orders(LegRole.SPOT) if o.filled > 0 and o.average is not None]
        out.append(LedgerEntry(pnl, row.created_wall, closed, reason, core.plan.sweep, marks[-1] if marks else None,
                               core.exposure().spot))  # fmt: skip
    return out


def dust(entries: Iterable[LedgerEntry]) -> list[dict[str, Any]]:
    """The desk's base dust per asset (`desk_dust`: what flat packages left behind, net of what open packages
    took over), valued at a mark: the last spot fill price the journal holds for the asset. Over every
    package of the journal: dust belongs to the desk, not to a period."""
    entries = list(entries)
    quantities = desk_dust((e.pnl.pair, e.pnl.state, e.spot_held, e.sweep) for e in entries)
    marks: dict[str, Decimal] = {}
    for e in entries:
        if e.spot_mark is not None:
            marks[assets_of(e.pnl.pair)[0]] = e.spot_mark
    rows = []
    for asset, quantity in sorted(quantities.items()):
        mark = marks.get(asset)
        quantity = quantity if quantity else ZERO  # swept away exactly: 0, not 0E-8
        # Positional notation, as the groups' sums: 1 satoshi of dust is "0.00000001", never "1E-8".
        rows.append({"asset": asset, "quantity": format(quantity, "f"),
                     "mark": None if mark is None else format(mark, "f"),
                     "value": None if mark is None else format(quantity * mark, "f")})  # fmt: skip
    return rows


@dataclass(frozen=True, slots=True)
class Mark:
    price: Decimal
    source: str  # "last fill" (the journal's) or "given"
    wall_time: float | None = None  # when the journal saw it


def journal_marks(journal: Journal) -> dict[str, Mark]:
    """The journal's last known price per symbol: the average price of the latest journaled order update with
    a fill on it (one pass over the journal; the intents say which symbol each client order id trades)."""
    symbols: dict[str, str] = {}
    out: dict[str, Mark] = {}
    for r in journal.rows():
        p = r.payload
        if r.kind == "intent" and "client_order_id" in p and "symbol" in p:
            symbols[str(p["client_order_id"])] = str(p["symbol"])
        elif r.kind == EVENT and p.get("kind") == "order" and p.get("average") is not None:
            symbol = symbols.get(str(p.get("client_order_id")))
            if symbol is not None and Decimal(str(p.get("filled") or 0)) > 0:
                out[symbol] = Mark(Decimal(str(p["average"])), "last fill", r.wall_time)
    return out


def unattributed_funding(journal: Journal, since: float | None = None) -> Decimal:
    """Funding the venue paid (or charged) while no package of this journal held the short: in the account,
    in no package (payments listed before the journal's first poll, its `funding_baseline`, are not counted)."""
    total = ZERO
    for r in journal.engine_log():
        nobodys = r.payload.get("event") == FUNDING_PAYMENT and not r.payload.get("split")
        if nobodys and (since is None or r.wall_time >= since):
            total += Decimal(str(r.payload.get("amount", "0")))
    return total


def aggregate(
    entries: Iterable[LedgerEntry], by: str, marks: Mapping[str, Decimal] | None = None
) -> list[dict[str, Any]]:
    """One row per group (sorted by key) plus a final `total` row; money as exact decimal strings. What is
    still held is valued at `marks` (symbol -> price; a symbol without one: the package's own last fill price
    on it, see `PackagePnl.value_at`)."""
    if by not in GROUPINGS:
        raise ValueError(f"by: {by!r} is not one of {', '.join(GROUPINGS)}")
    at = dict(marks or {})
    groups: dict[str, list[LedgerEntry]] = {}
    for e in entries:
        groups.setdefault(e.key(by), []).append(e)
    rows = [_sum(key, members, at) for key, members in sorted(groups.items())]
    rows.append(_sum("total", [e for members in groups.values() for e in members], at))
    return rows


def _sum(key: str, entries: list[LedgerEntry], marks: Mapping[str, Decimal]) -> dict[str, Any]:
    def total(values: Iterable[Decimal]) -> str:
        # Exact, in positional notation: a sum of zeros at 7 places is "0.0000000", never str()'s "0E-7" (which
        # a CSV reader or a spreadsheet may take for text); a tiny amount is "0.00000012", never "1.2E-7".
        return format(sum(values, ZERO), "f")

    flat = [e for e in entries if e.pnl.state is State.FLAT]
    values = [(e, e.pnl.value_at(marks)) for e in entries]
    open_values = [v for e, v in values if e.pnl.state is not State.FLAT]
    return {
        "key": key,
        "packages": len(entries),
        "flat": len(flat),
        "open": len(entries) - len(flat),
        "realized": total(e.pnl.realized for e in flat if e.pnl.realized is not None),
        "unpriced": sum(1 for e in flat if e.pnl.realized is None),  # the venue closed part at a price unknown
        "fees": total(e.pnl.fees_quote for e in entries),
        "funding": total(e.pnl.funding for e in entries),
        "slippage": total(e.pnl.slippage for e in entries),
        "dust_value": total(e.pnl.residual_value for e in flat),
        "notional": total(e.pnl.spot.notional + e.pnl.perp.notional for e in entries),
        # Mark-to-market of the packages still open (hedged or unwinding), at the marks.
        "unrealized": total(v for v in open_values if v is not None),
        # Every priced package (flat and open): cash, quote fees and funding, plus what it holds at the marks.
        "value": total(v for _, v in values if v is not None),
    }
