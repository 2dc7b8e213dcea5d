"""Recovery after a crash: bring every package the journal left unfinished back to safety from the venue's
facts, journaling each step as a `recovery` row (`legguard audit show` prints them in the package's timeline).

`Engine.recover()` is the entry point; `settle_recovered()` waits until the recovered packages are hedged or
flat (both `legguard recover` and `legguard run` use it before anything new is opened).

The account is assumed to be dedicated to this journal's engine: a perp position the packages do not
explain is reported, never traded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

import trio

from legguard.domain import (
    MarketKind,
    OrderNotFound,
    OrderRejected,
    OrderRequest,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RejectReason,
    Side,
    VenueError,
)
from legguard.fsm import (
    Abort,
    Event,
    LegRole,
    OrderEvent,
    PackageCore,
    Purpose,
    Recovered,
    State,
    VenueReduction,
)

from ._actor import to_order_event
from ._crashpoints import ARMED as CRASH_ARMED
from ._crashpoints import reached as crash_point
from ._handle import PackageHandle
from ._host import EngineHost
from .journal import JournalError, ReplayMismatch, UnknownPackage, replay_package

log = logging.getLogger("legguard.engine.recovery")

RECOVERY = "recovery"  # the journal kind of every per-package recovery step


@dataclass(slots=True)
class RecoveryReport:
    """What `Engine.recover()` found and did. `settle_recovered()` fills `final`."""

    at_restart: dict[str, str] = field(default_factory=dict)  # package -> state the journal left it in
    resumed: list[str] = field(default_factory=list)  # packages handed back to their state machine
    answers: dict[str, dict[str, str]] = field(default_factory=dict)  # package -> client id -> venue's word
    unreachable: list[str] = field(default_factory=list)  # client ids the venue could not be asked about
    reduced: dict[str, str] = field(default_factory=dict)  # package -> perp bought back while we were down
    unexplained_positions: dict[str, str] = field(default_factory=dict)  # perp symbol -> quantity nobody owns
    positions_verified: bool = True
    strays: list[dict[str, str]] = field(default_factory=list)  # open orders with our prefix, unknown
    unrecoverable: dict[str, str] = field(default_factory=dict)  # package -> why its journal cannot be replayed
    final: dict[str, str] = field(default_factory=dict)  # package -> state after settling
    # package -> length of its event log once its recovery events are stepped (settling waits for that)
    fed: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def unsafe(self) -> dict[str, str]:
        """Packages not (yet) hedged-and-quiet or flat after settling, with their state."""
        out = {pid: state for pid, state in self.final.items() if state not in (State.HEDGED.value, State.FLAT.value)}
        out.update({pid: "unrecoverable" for pid in self.unrecoverable})
        return out

    @property
    def ok(self) -> bool:
        return (
            not self.unsafe
            and not self.unexplained_positions
            and all(s.get("outcome") == "cancelled" for s in self.strays)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "at_restart": dict(self.at_restart),
            "resumed": list(self.resumed),
            "answers": {k: dict(v) for k, v in self.answers.items()},
            "unreachable": list(self.unreachable),
            "reduced": dict(self.reduced),
            "unexplained_positions": dict(self.unexplained_positions),
            "positions_verified": self.positions_verified,
            "strays": [dict(s) for s in self.strays],
            "unrecoverable": dict(self.unrecoverable),
            "final": dict(self.final),
            "unsafe": self.unsafe,
        }


@dataclass(slots=True)
class _Resume:
    handle: PackageHandle
    events: list[Event]
    answers: dict[str, OrderEvent]


async def recover(engine: EngineHost) -> RecoveryReport:
    """For each package not flat: rebuild its core from the journal, ask the venue about every order not
    known to be finished (intents never acknowledged included), then resume its state machine with the
    answers and `Recovered`: dispatched packages decide (hedge / void / leg_broken), orphaned and unwinding
    ones resume the kill switch, pending ones (nothing was sent) are aborted. Perp positions are checked
    against what the packages hold: a short the venue no longer shows was bought back while we were down
    (its packages get a `VenueReduction`: leg_broken -> unwind). Open orders carrying this journal's
    client-id prefix that no package knows are cancelled and their fills unwound.

    Nothing is resumed before every question is answered, so the position check sees the venue as the
    crash left it, not as the resumed packages change it."""
    packages = engine._packages
    assert packages is not None, "recover() runs inside `async with engine.running()`"
    journal = engine.journal
    report = RecoveryReport()
    rows = journal.open_packages()
    journal.record("engine", None, {"event": "recovery_started", "packages": [r.package_id for r in rows]},
                   trio.current_time())  # fmt: skip
    resumes: list[_Resume] = []
    for row in rows:
        pid = row.package_id
        now = trio.current_time()
        try:
            core = replay_package(journal, pid)
        except (ReplayMismatch, JournalError) as exc:
            # Never guess a package's history: leave it to an operator, and say so loudly.
            report.unrecoverable[pid] = str(exc)
            log.critical("recovery: package %s cannot be replayed: %s", pid, exc)
            journal.record(RECOVERY, pid, {"step": "unrecoverable", "error": str(exc)}, now)
            continue
        report.at_restart[pid] = core.state.value
        handle = PackageHandle.create(core, now)
        handle.events = list(journal.events(pid))
        handle.reductions_posted = core.venue_reduced
        handle.ever_orphaned = any(o.intent.purpose is Purpose.UNWIND for o in core.orders.values())
        engine.handles[pid] = handle
        if core.state not in (State.FLAT, State.HEDGED):
            engine.live.add(pid)
        for cid in core.orders:
            engine.register_order(cid, handle)  # stream updates from now on queue in its mailbox
        if core.state is State.PENDING:
            # Its intents are journaled in the same step as the dispatch: none exist, nothing was sent.
            journal.record(RECOVERY, pid, {"step": "abort", "state": core.state.value}, now)
            resumes.append(_Resume(handle, [Abort("recovery: the crash came before any order was sent")], {}))
            continue
        answers = await _ask_all(engine, core, report)
        report.answers[pid] = {cid: _describe(ev) for cid, ev in answers.items()}
        journal.record(RECOVERY, pid, {"step": "queried", "state": core.state.value, "orders": len(core.orders),
                       "answers": report.answers[pid]}, trio.current_time())  # fmt: skip
        if CRASH_ARMED:
            crash_point("during_recovery")
        resumes.append(_Resume(handle, [*answers.values(), Recovered()], answers))
    await _sweep_strays(engine, report)  # first: unwinding a stray's fill changes the positions checked next
    await _check_positions(engine, resumes, report)
    # The account beyond the packages, as recovery leaves it: each resumed package holds what the venue's
    # answers say (its core learns them only once resumed).
    truth: dict[str, tuple[Decimal, Decimal]] = {}
    for r in resumes:
        twin = r.handle.core.clone()
        for event in r.events:
            twin.handle(event)
        exp = twin.exposure()
        truth[r.handle.package_id] = (exp.spot, exp.perp)
    await engine.take_baseline(truth)
    for r in resumes:
        pid = r.handle.package_id
        report.resumed.append(pid)
        report.fed[pid] = len(r.handle.events) + len(r.events)
        packages.start_soon(engine._supervise, r.handle, r.events, name=f"package {pid} (recovered)")
    journal.record("engine", None, {"event": "recovered", **_brief(report)}, trio.current_time())
    return report


async def settle_recovered(engine: EngineHost, report: RecoveryReport, limit: float | None = None) -> RecoveryReport:
    """Wait until every resumed package is flat, or hedged with nothing in flight, for at most `limit`
    seconds (default: the engine's shutdown grace, i.e. two acknowledgements and the unwind deadline), then
    journal each package's outcome (`recovery` row, step `resolved` or `unresolved`) and fill `report.final`."""
    d = engine.config.deadlines
    limit = (2 * d.ack + d.unwind) if limit is None else limit

    def safe(core: PackageCore) -> bool:
        return core.state is State.FLAT or (core.state is State.HEDGED and core.is_quiescent())

    def settled(h: PackageHandle) -> bool:
        # Its recovery events stepped (until then the core still shows the journal's state), and safe.
        return len(h.events) >= report.fed.get(h.package_id, 0) and safe(h.core)

    handles = [engine.handles[pid] for pid in report.resumed]
    with trio.move_on_after(limit):
        for h in handles:

            def check(_core: PackageCore, h: PackageHandle = h) -> bool:
                return settled(h)

            await h.wait_until(check)
    now = trio.current_time()
    for h in handles:
        core, done = h.core, settled(h)
        report.final[h.package_id] = core.state.value if done else f"{core.state.value} (in flight)"
        exp = core.exposure()
        engine.journal.record(RECOVERY, h.package_id,
                              {"step": "resolved" if done else "unresolved", "state": core.state.value,
                               "spot": str(exp.spot), "perp": str(exp.perp), "unknown": exp.unknown},
                              now)  # fmt: skip
    return report


# --- asking the venue ---------------------------------------------------------------------------------


async def _ask_all(engine: EngineHost, core: PackageCore, report: RecoveryReport) -> dict[str, OrderEvent]:
    """The venue's word on every order of the package not known to be finished, asked together."""
    answers: dict[str, OrderEvent] = {}

    # When each intent was journaled (wall clock: it spans the crash): an order the venue does not know may
    # still be accepted until its recvWindow (plus clock allowance) from then has passed.
    d = engine.config.deadlines
    accept_until = {
        str(row.payload.get("client_order_id")): row.wall_time + d.recv_window + d.clock_allowance
        for row in engine.journal.timeline(core.plan.package_id)
        if row.kind == "intent"
    }

    async def ask(cid: str, symbol: str) -> None:
        answer = await _ask(engine, cid, symbol)
        wait = accept_until.get(cid, 0.0) - time.time()
        if _not_found(answer) and wait > 0:
            # Not found yet, but it could still land: ask again once it no longer can.
            engine.journal.record(RECOVERY, core.plan.package_id, {"step": "not_found_yet", "client_order_id": cid,
                                  "ask_again_in": round(wait, 3)}, trio.current_time())  # fmt: skip
            await trio.sleep(wait)
            answer = await _ask(engine, cid, symbol)
        answers[cid] = answer
        if answers[cid].status is OrderStatus.UNKNOWN:
            report.unreachable.append(cid)

    async with trio.open_nursery() as nursery:
        for cid, facts in core.orders.items():
            if facts.live:
                nursery.start_soon(ask, cid, facts.intent.symbol)
    # Fed in the order the intents were journaled, so the replayed history is deterministic.
    return {cid: answers[cid] for cid in core.orders if cid in answers}


async def _ask(engine: EngineHost, cid: str, symbol: str) -> OrderEvent:
    """One order's state; `rejected` if the venue never received it (the crash came between journaling its
    intent and sending it); `unknown` if the venue cannot be asked (the kill switch asks again)."""
    try:
        with trio.fail_after(engine.config.deadlines.ack):
            return to_order_event(await engine.venue.fetch_order(symbol, cid))
    except OrderNotFound:
        return OrderEvent(cid, OrderStatus.REJECTED, reason=RejectReason.OTHER)
    except (trio.TooSlowError, VenueError) as exc:
        log.warning("recovery: cannot ask about %s: %s", cid, exc)
        return OrderEvent(cid, OrderStatus.UNKNOWN)


def _not_found(ev: OrderEvent) -> bool:
    return ev.status is OrderStatus.REJECTED and ev.reason is RejectReason.OTHER and ev.filled == 0


def _describe(ev: OrderEvent) -> str:
    text = f"{ev.status.value} filled {ev.filled}"
    if ev.status is OrderStatus.REJECTED and ev.reason is RejectReason.OTHER and ev.filled == 0:
        text += " (not found: never sent)"
    return text


# --- positions ----------------------------------------------------------------------------------------


def _perp_after(core: PackageCore, answers: Mapping[str, OrderEvent]) -> Decimal:
    """The package's signed perp position once the answers are applied (what `exposure().perp` will say)."""
    total = core.venue_reduced
    for cid, o in core.orders.items():
        if o.intent.role is not LegRole.PERP:
            continue
        answer = answers.get(cid)
        filled = max(o.filled, answer.filled) if answer is not None else o.filled
        total += filled if o.intent.side is Side.BUY else -filled
    return total


async def _check_positions(engine: EngineHost, resumes: list[_Resume], report: RecoveryReport) -> None:
    """Per perp symbol: what the venue holds against what the packages hold. A short the venue no longer
    shows was bought back while we were down (liquidation, ADL): charged to the packages newest first, as
    the gateway charges a live one. Anything else (a position no package holds included) is reported and
    left alone."""
    holders = [r for r in resumes if _perp_after(r.handle.core, r.answers) != 0]
    try:
        with trio.fail_after(engine.config.deadlines.ack * 2):
            positions = await engine.venue.fetch_positions()
    except (trio.TooSlowError, VenueError) as exc:
        report.positions_verified = not holders
        log.error("recovery: cannot fetch positions, hedges unverified: %s", exc)
        engine.journal.record("engine", None, {"event": "recovery_positions_unverified", "error": str(exc)},
                              trio.current_time())  # fmt: skip
        return
    by_symbol: dict[str, list[_Resume]] = {symbol: [] for symbol, qty in positions.items() if qty != 0}
    for r in holders:
        by_symbol.setdefault(r.handle.core.plan.perp.symbol, []).append(r)
    for symbol, group in sorted(by_symbol.items()):
        expected = sum((_perp_after(r.handle.core, r.answers) for r in group), Decimal(0))
        held = positions.get(symbol, Decimal(0))
        missing = held - expected  # > 0: less short than the packages hold
        now = trio.current_time()
        for r in sorted(group, key=lambda r: r.handle.package_id, reverse=True):
            short = -_perp_after(r.handle.core, r.answers)
            take = min(short, missing)
            if take <= 0:
                continue
            pid = r.handle.package_id
            r.handle.reductions_posted += take
            r.events.append(VenueReduction(take, "found at recovery"))
            report.reduced[pid] = str(take)
            engine.journal.record(RECOVERY, pid, {"step": "perp_reduced_while_down", "symbol": symbol,
                                  "quantity": str(take), "venue_position": str(held),
                                  "packages_position": str(expected)}, now)  # fmt: skip
            missing -= take
        if missing != 0:
            report.unexplained_positions[symbol] = str(missing)
            log.error("recovery: %s position %s, packages hold %s: left alone, for an operator", symbol, held,
                      expected)  # fmt: skip
            engine.journal.record("engine", None, {"event": "unexplained_position", "symbol": symbol,
                                  "venue_position": str(held), "packages_position": str(expected)},
                                  now)  # fmt: skip
        for r in group:
            if r.handle.package_id not in report.reduced:
                engine.journal.record(RECOVERY, r.handle.package_id,
                                      {"step": "perp_verified", "symbol": symbol, "venue_position": str(held),
                                       "packages_position": str(expected)}, now)  # fmt: skip


# --- strays: our orders the journal does not know -----------------------------------------------------


async def _sweep_strays(engine: EngineHost, report: RecoveryReport) -> None:
    """Open orders with this journal's client-id prefix that no package knows (the journal lost what it
    wrote about them, e.g. power loss under `durability = "process"`): cancel, then unwind whatever they
    filled with a market order, journaled before it is sent."""
    prefix = f"lg{engine.journal.journal_id}"
    try:
        with trio.fail_after(engine.config.deadlines.ack * 2):
            open_orders = await engine.venue.fetch_open_orders()
    except (trio.TooSlowError, VenueError) as exc:
        log.warning("recovery: cannot list open orders: %s", exc)
        engine.journal.record("engine", None, {"event": "recovery_strays_unchecked", "error": str(exc)},
                              trio.current_time())  # fmt: skip
        return
    for update in open_orders:
        cid = update.client_order_id
        if cid.startswith(prefix) and cid not in engine._orders:
            report.strays.append(await _adopt(engine, update, prefix))


async def _adopt(engine: EngineHost, update: OrderUpdate, prefix: str) -> dict[str, str]:
    cid, symbol = update.client_order_id, update.symbol
    journal = engine.journal
    owner = _owner(engine, cid, prefix)
    entry: dict[str, str] = {"client_order_id": cid, "symbol": symbol, "side": update.side.value}
    try:
        with trio.fail_after(engine.config.deadlines.ack):
            final = await engine.venue.cancel_order(symbol, cid)
        entry["outcome"] = "cancelled"
    except OrderNotFound:
        final = update  # finished meanwhile: ask below
        entry["outcome"] = "cancelled"
    except (trio.TooSlowError, VenueError) as exc:
        entry["outcome"] = f"cancel failed: {exc}"
        final = update
    if entry["outcome"] == "cancelled":
        try:
            with trio.fail_after(engine.config.deadlines.ack):
                final = await engine.venue.fetch_order(symbol, cid)
        except (trio.TooSlowError, VenueError) as exc:
            log.warning("recovery: stray %s: cannot re-read it after the cancel: %s", cid, exc)
    entry["filled"] = str(final.filled)
    now = trio.current_time()
    journal.record("engine", None, {"event": "adopted_stray_order", **entry}, now)
    if owner is not None:
        journal.record(RECOVERY, owner, {"step": "stray_order", **entry}, now)
    if final.filled > 0 and entry["outcome"] == "cancelled":
        entry.update(await unwind_stray(engine, final, owner))
    return entry


def _owner(engine: EngineHost, cid: str, prefix: str) -> str | None:
    """The journaled package a client id was derived from, if any (ids are `<prefix><number:06d>-...`)."""
    number = cid[len(prefix) : len(prefix) + 6]
    if not number.isdigit():
        return None
    pid = f"P{number}"
    try:
        engine.journal.package(pid)
    except UnknownPackage:
        return None
    return pid


async def unwind_stray(engine: EngineHost, order: OrderUpdate, owner: str | None) -> dict[str, str]:
    """Close what an adopted order filled: the opposite side, at market (reduce-only on the perp)."""
    market = engine.markets.get(order.symbol)
    if market is None:
        return {"unwind": f"not unwound: {order.symbol} is not a market of this venue"}
    held = order.filled - order.fee_base if order.side is Side.BUY else order.filled
    qty = (held / market.step_size).to_integral_value(rounding=ROUND_DOWN) * market.step_size
    if qty <= 0 or qty < market.min_qty:
        return {"unwind": f"not unwound: {held} is below the tradable size"}
    perp = market.kind is MarketKind.LINEAR
    request = OrderRequest(f"{order.client_order_id}-X", order.symbol, order.side.opposite, OrderType.MARKET, qty,
                           reduce_only=perp)  # fmt: skip
    payload = {"event": "stray_unwind_intent", "client_order_id": request.client_order_id, "symbol": order.symbol,
               "side": request.side.value, "amount": str(qty), "reduce_only": perp}  # fmt: skip
    engine.journal.record("engine", None, payload, trio.current_time())  # write-ahead, like every intent
    try:
        with trio.fail_after(engine.config.deadlines.ack):
            ack = await engine.venue.fire(engine.venue.arm(request))
        outcome = {"unwind": request.client_order_id, "unwind_status": ack.status.value,
                   "unwind_filled": str(ack.filled)}  # fmt: skip
    except (OrderRejected, trio.TooSlowError, VenueError) as exc:
        outcome = {"unwind": request.client_order_id, "unwind_status": f"failed: {exc}"}
    now = trio.current_time()
    engine.journal.record("engine", None, {"event": "stray_unwound", **outcome}, now)
    if owner is not None:
        engine.journal.record(RECOVERY, owner, {"step": "stray_unwound", **outcome}, now)
    return outcome


def _brief(report: RecoveryReport) -> dict[str, Any]:
    return {
        "at_restart": dict(report.at_restart),
        "reduced": dict(report.reduced),
        "unreachable": len(report.unreachable),
        "strays": len(report.strays),
        "unexplained_positions": dict(report.unexplained_positions),
        "unrecoverable": sorted(report.unrecoverable),
    }
