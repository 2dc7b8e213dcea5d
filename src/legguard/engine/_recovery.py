"""Recovery after a crash: bring every package the journal left unfinished back to safety from the venue's
facts, journaling each step as a `recovery` row (`legguard audit show` prints them in the package's timeline).

`Engine.recover()` is the entry point; `settle_recovered()` waits until the recovered packages are hedged or
flat (both `legguard recover` and `legguard run` use it before anything new is opened).

Recovery acts only on evidence: it trades only quantities that the venue's own records of a package's client
order ids prove. A package whose orders the venue does not know although the journal says it had them (or
whose fills the venue puts lower than the journal does) is never traded: it is reported as unproven, left
where the journal says it is, and the engine halts for new packages; so it does for a position no package
explains and for a filled order with this journal's prefix that the journal never wrote. Everything an
operator must look at makes the report not ok (`legguard recover` exits 1).

The account is assumed to be dedicated to this journal's engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
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
    MAX_UNWIND_ATTEMPTS,
    Abort,
    Adopted,
    Event,
    Fault,
    LegRole,
    OrderEvent,
    OrderIntent,
    PackageCore,
    Purpose,
    Recovered,
    Restarted,
    State,
    VenueReduction,
    client_order_id,
)

from ._actor import to_order_event
from ._crashpoints import ARMED as CRASH_ARMED
from ._crashpoints import reached as crash_point
from ._handle import PackageHandle
from ._host import EngineHost
from ._outage import waiting_out_rate_limits
from .journal import FUNDING, JournalError, ReplayMismatch, UnknownPackage, funding_amount, replay_package

log = logging.getLogger("legguard.engine.recovery")

RECOVERY = "recovery"  # the journal kind of every per-package recovery step
UNJOURNALED = "filled and closed; the journal never wrote it: left alone, for an operator"
# Every request of recovery waits out rate-limit refusals (`waiting_out_rate_limits`, 30 s in all): the
# recovery of many packages spends the local request budget on its order queries, and a refused request
# would otherwise leave an order unknown, the strays or the positions unchecked.


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
    strays: list[dict[str, str]] = field(default_factory=list)  # orders with our prefix the journal never wrote
    unrecoverable: dict[str, str] = field(default_factory=dict)  # package -> why its journal cannot be replayed
    # client id -> package: orders the venue knows that the journal lost (a crash lost their commits), adopted
    lost_orders: dict[str, str] = field(default_factory=dict)
    # client ids that may exist at the venue without the journal knowing, and the venue could not be asked
    unprobed: list[str] = field(default_factory=list)
    epoch: int = 0  # the restart epoch recovered packages' new client ids carry
    # package -> what the venue contradicts (orders it does not know, lower fills): never traded
    unproven: dict[str, str] = field(default_factory=dict)
    in_flight: dict[str, str] = field(default_factory=dict)  # perp symbol -> gap left to unwinds of unknown outcome
    final: dict[str, str] = field(default_factory=dict)  # package -> state after settling
    # package -> length of its event log once its recovery events are stepped (settling waits for that)
    fed: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def unsafe(self) -> dict[str, str]:
        """Packages not (yet) hedged-and-quiet or flat after settling, with their state."""
        out = {pid: state for pid, state in self.final.items() if state not in (State.HEDGED.value, State.FLAT.value)}
        out.update({pid: "unrecoverable" for pid in self.unrecoverable})
        out.update({pid: "unproven: not traded" for pid in self.unproven})
        return out

    @property
    def ok_so_far(self) -> bool:
        """Nothing found that needs an operator (before the resumed packages settle)."""
        return (
            not self.unrecoverable
            and not self.unproven
            and not self.unexplained_positions
            and not self.unprobed
            and all(s.get("outcome") == "cancelled" for s in self.strays)
        )

    @property
    def ok(self) -> bool:
        return self.ok_so_far and not self.unsafe

    def needs_operator(self) -> str:
        """One line: what recovery found and left for an operator."""
        parts = []
        if self.unproven:
            parts.append(f"{len(self.unproven)} package(s) the venue does not confirm: {', '.join(self.unproven)}")
        if self.unrecoverable:
            parts.append(f"{len(self.unrecoverable)} package(s) that cannot be replayed")
        if self.unexplained_positions:
            parts.append("unexplained position(s): "
                         + ", ".join(f"{s} {q}" for s, q in self.unexplained_positions.items()))  # fmt: skip
        bad = [s["client_order_id"] for s in self.strays if s.get("outcome") != "cancelled"]
        if bad:
            parts.append(f"order(s) with this journal's prefix it never wrote: {', '.join(bad)}")
        if self.unprobed:
            parts.append(f"order id(s) that may exist at the venue and could not be asked: {', '.join(self.unprobed)}")
        return "; ".join(parts) or "nothing"

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
            "lost_orders": dict(self.lost_orders),
            "unprobed": list(self.unprobed),
            "epoch": self.epoch,
            "unproven": dict(self.unproven),
            "in_flight": dict(self.in_flight),
            "final": dict(self.final),
            "unsafe": self.unsafe,
        }


@dataclass(slots=True)
class _Resume:
    handle: PackageHandle
    events: list[Event]
    answers: dict[str, OrderEvent]
    adopted: dict[str, OrderIntent] = field(default_factory=dict)  # orders the journal lost, found at the venue


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
    # Durable before anything is sent: no id a recovered package makes from now on can equal one the crashed
    # process sent (the journal may have lost it, and the venue accepts a closed order's id again).
    report.epoch = journal.next_epoch() if rows else 0
    journal.record("engine", None, {"event": "recovery_started", "packages": [r.package_id for r in rows],
                   "epoch": report.epoch}, trio.current_time())  # fmt: skip
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
        handle = PackageHandle.create(core, now, engine.precedence)
        handle.events = list(journal.events(pid))
        handle.reductions_posted = core.venue_reduced
        handle.funding = sum((funding_amount(r.payload) for r in journal.timeline(pid) if r.kind == FUNDING),
                             Decimal(0))  # fmt: skip
        handle.ever_orphaned = any(o.intent.purpose is Purpose.UNWIND for o in core.orders.values())
        engine.handles[pid] = handle
        if core.state not in (State.FLAT, State.HEDGED):
            engine.live.add(pid)
        for cid in core.orders:
            engine.register_order(cid, handle)  # stream updates from now on queue in its mailbox
        if core.state is State.PENDING:
            lost = await _probe_lost(engine, core, report)
            _journal_lost(engine, pid, lost, report)
            if lost:
                # The dispatch was journaled and lost: the entries reached the venue. Resuming would re-send
                # their ids; aborting would call the package flat. Neither: an operator decides.
                report.unrecoverable[pid] = f"the venue knows entry orders the journal lost: {', '.join(lost)}"
                log.critical("recovery: package %s: %s", pid, report.unrecoverable[pid])
                journal.record(RECOVERY, pid, {"step": "unrecoverable", "error": report.unrecoverable[pid]}, now)
                engine.live.discard(pid)
                del engine.handles[pid]
                continue
            # Its intents are journaled in the same step as the dispatch, and the venue knows neither entry id.
            journal.record(RECOVERY, pid, {"step": "abort", "state": core.state.value}, now)
            resumes.append(_Resume(handle, [Abort("recovery: the crash came before any order was sent")], {}))
            continue
        answers, not_found = await _ask_all(engine, core, report)
        report.answers[pid] = {cid: _describe(ev, cid in not_found) for cid, ev in answers.items()}
        journal.record(RECOVERY, pid, {"step": "queried", "state": core.state.value, "orders": len(core.orders),
                       "answers": report.answers[pid]}, trio.current_time())  # fmt: skip
        lost = await _probe_lost(engine, core, report)
        _journal_lost(engine, pid, lost, report)
        if CRASH_ARMED:
            crash_point("during_recovery")
        contradicted = _contradictions(core, answers, not_found)
        if contradicted:
            _set_aside(engine, handle, contradicted, report)
            continue
        # Only the orders the core still waits for are fed; the finished ones were asked for evidence only.
        fed = {cid: ev for cid, ev in answers.items() if core.orders[cid].live}
        # The restart epoch first, so every order the package makes from here on has a fresh id; then the
        # orders the journal lost (adopted, with the venue's word on them), then the answers.
        events: list[Event] = [Restarted(report.epoch)]
        events += [Adopted(intent) for intent, _ in lost.values()]
        events += [answer for _, answer in lost.values()]
        events += [*fed.values(), Recovered()]
        if lost:
            # The journal's account of this package is incomplete: the kill switch flattens it from the venue's
            # facts rather than trust a hedge decided without them.
            events.append(Fault("recovery: the venue knows orders of this package the journal lost"))
        for cid in lost:
            engine.register_order(cid, handle)
        resume = _Resume(handle, events, {**answers, **{cid: a for cid, (_, a) in lost.items()}})
        resume.adopted = {cid: intent for cid, (intent, _) in lost.items()}
        resumes.append(resume)
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
    if not report.ok_so_far:
        engine.halt(f"recovery: {report.needs_operator()}")
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

    handles = [engine.handles[pid] for pid in report.resumed if pid in engine.handles]
    with trio.move_on_after(limit):
        for h in handles:

            def check(_core: PackageCore, h: PackageHandle = h) -> bool:
                return settled(h)

            await h.wait_until(check)
    now = trio.current_time()
    held = {h.package_id: h for h in handles}
    for pid in report.resumed:
        kept = held.get(pid)
        # None: released from memory before this call, so it ended flat and quiescent (the journal has it).
        core, done = (replay_package(engine.journal, pid), True) if kept is None else (kept.core, settled(kept))
        report.final[pid] = core.state.value if done else f"{core.state.value} (in flight)"
        exp = core.exposure()
        engine.journal.record(RECOVERY, pid,
                              {"step": "resolved" if done else "unresolved", "state": core.state.value,
                               "spot": str(exp.spot), "perp": str(exp.perp), "unknown": exp.unknown},
                              now)  # fmt: skip
    return report


# --- asking the venue ---------------------------------------------------------------------------------


async def _ask_all(
    engine: EngineHost, core: PackageCore, report: RecoveryReport
) -> tuple[dict[str, OrderEvent], set[str]]:
    """The venue's word, asked together, on every order of the package that is not known to be finished or
    that the journal says filled (the evidence for whatever recovery may trade); and which of them the venue
    does not know."""
    answers: dict[str, OrderEvent] = {}
    not_found: set[str] = set()

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
        # Only an order the journal merely intended can still land; one the venue had answered for and now
        # does not know is a contradiction (below), not a late arrival.
        facts = core.orders[cid]
        intended_only = facts.status not in _SEEN_BY_VENUE and facts.filled == 0
        wait = accept_until.get(cid, 0.0) - time.time()
        if answer is None and intended_only and wait > 0:
            # Not found yet, but it could still land: ask again once it no longer can.
            engine.journal.record(RECOVERY, core.plan.package_id, {"step": "not_found_yet", "client_order_id": cid,
                                  "ask_again_in": round(wait, 3)}, trio.current_time())  # fmt: skip
            await trio.sleep(wait)
            answer = await _ask(engine, cid, symbol)
        if answer is None:
            not_found.add(cid)
            answer = OrderEvent(cid, OrderStatus.REJECTED, reason=RejectReason.OTHER)
        answers[cid] = answer
        if answer.status is OrderStatus.UNKNOWN:
            report.unreachable.append(cid)

    async with trio.open_nursery() as nursery:
        for cid, facts in core.orders.items():
            if facts.live or facts.filled > 0:
                nursery.start_soon(ask, cid, facts.intent.symbol)
    # Fed in the order the intents were journaled, so the replayed history is deterministic.
    return {cid: answers[cid] for cid in core.orders if cid in answers}, not_found


async def _ask(engine: EngineHost, cid: str, symbol: str) -> OrderEvent | None:
    """One order's state; None if the venue does not know it; `unknown` if the venue cannot be asked (the
    kill switch asks again)."""
    try:
        ask = _fetch_order(engine, symbol, cid)
        return to_order_event(await waiting_out_rate_limits(ask, f"recovery: asking about {cid}"))
    except OrderNotFound:
        return None
    except (trio.TooSlowError, VenueError) as exc:
        log.warning("recovery: cannot ask about %s: %s", cid, exc)
        return OrderEvent(cid, OrderStatus.UNKNOWN)


def _journal_lost(
    engine: EngineHost, pid: str, lost: Mapping[str, tuple[OrderIntent, OrderEvent]], report: RecoveryReport
) -> None:
    for cid, (intent, answer) in lost.items():
        report.lost_orders[cid] = pid
        log.error("recovery: package %s: the venue knows %s (%s), the journal lost it", pid, cid, _describe(answer))
        payload = {"step": "lost_order_found", "client_order_id": cid, "answer": _describe(answer),
                   "intent": intent.to_dict()}  # fmt: skip
        engine.journal.record(RECOVERY, pid, payload, trio.current_time())


async def _probe_lost(
    engine: EngineHost, core: PackageCore, report: RecoveryReport
) -> dict[str, tuple[OrderIntent, OrderEvent]]:
    """Orders of the package the venue knows and the journal does not: the ids the core would have made next
    (its next unwind attempt per leg, at the epoch it was in; both entries if it never dispatched) are asked
    for one after the other until the venue does not know one. Only a crash that lost commits leaves any."""
    found: dict[str, tuple[OrderIntent, OrderEvent]] = {}
    prefix = core.plan.client_id_prefix
    if core.state is State.PENDING:
        candidates = [(role, Purpose.ENTRY, 0) for role in LegRole]
    else:
        candidates = [(role, Purpose.UNWIND, core.unwind_attempts[role]) for role in LegRole]
    for role, purpose, attempt in candidates:
        leg = core.plan.leg(role)
        while attempt < MAX_UNWIND_ATTEMPTS:
            cid = client_order_id(prefix, role, purpose, attempt, core.epoch)
            if cid in core.orders:
                break
            try:
                update = await waiting_out_rate_limits(
                    _fetch_order(engine, leg.symbol, cid), f"recovery: asking whether {cid} exists"
                )
            except OrderNotFound:
                break
            except (trio.TooSlowError, VenueError) as exc:
                log.error("recovery: cannot ask whether %s exists (the journal may have lost it): %s", cid, exc)
                report.unprobed.append(cid)
                break
            entry = purpose is Purpose.ENTRY  # what the core would have made: see PackageCore._new_intent
            intent = OrderIntent(cid, role, purpose, attempt, leg.symbol, update.side,
                                 OrderType.LIMIT if entry else OrderType.MARKET, update.amount,
                                 leg.price if entry else None, post_only=entry,
                                 reduce_only=not entry and role is LegRole.PERP)  # fmt: skip
            found[cid] = (intent, to_order_event(update))
            if purpose is Purpose.ENTRY:
                break
            attempt += 1
    return found


def _describe(ev: OrderEvent, not_found: bool = False) -> str:
    if not_found:
        return "rejected filled 0 (not found: never sent)"
    return f"{ev.status.value} filled {ev.filled}"


# Statuses only the venue's answer can have put in the journal: the order reached the venue.
_SEEN_BY_VENUE = frozenset({OrderStatus.OPEN, OrderStatus.CLOSED, OrderStatus.CANCELED, OrderStatus.EXPIRED})


def _contradictions(core: PackageCore, answers: Mapping[str, OrderEvent], not_found: set[str]) -> list[str]:
    """Where the venue's records contradict the journal: an order the journal says the venue had (answered
    it, or filled it) that the venue does not know, or a fill the venue puts lower than the journal does.
    An order the journal only intended and the venue does not know was never sent: no contradiction."""
    out: list[str] = []
    for cid, answer in answers.items():
        facts = core.orders[cid]
        if cid in not_found:
            if facts.status in _SEEN_BY_VENUE or facts.filled > 0:
                out.append(f"{cid}: the venue does not know it (journal: {facts.status.value} filled {facts.filled})")
        elif answer.status is not OrderStatus.UNKNOWN and answer.filled < facts.filled:
            out.append(f"{cid}: the venue says filled {answer.filled}, the journal {facts.filled}")
    return out


def _set_aside(engine: EngineHost, handle: PackageHandle, contradicted: list[str], report: RecoveryReport) -> None:
    """A package the venue does not confirm: never resumed, never traded, not counted against the venue's
    positions; reported and journaled for an operator (it stays open in the journal)."""
    pid = handle.package_id
    engine.handles.pop(pid, None)
    engine.live.discard(pid)
    for cid in handle.core.orders:
        engine._orders.pop(cid, None)
    report.unproven[pid] = "; ".join(contradicted)
    log.critical("recovery: package %s is not traded: %s", pid, report.unproven[pid])
    engine.journal.record(RECOVERY, pid, {"step": "unproven", "state": handle.core.state.value,
                          "contradictions": contradicted}, trio.current_time())  # fmt: skip


# --- positions ----------------------------------------------------------------------------------------


def _perp_after(core: PackageCore, answers: Mapping[str, OrderEvent],
                adopted: Mapping[str, OrderIntent] | None = None) -> Decimal:  # fmt: skip
    """The package's signed perp position once the answers are applied (what `exposure().perp` will say):
    proven fills only (an unanswered order counts what the journal knows); orders adopted from the venue
    (the journal lost them) included."""
    total = core.venue_reduced
    intents = [(cid, o.intent, o.filled) for cid, o in core.orders.items()]
    intents += [(cid, i, Decimal(0)) for cid, i in (adopted or {}).items()]
    for cid, intent, known in intents:
        if intent.role is not LegRole.PERP:
            continue
        answer = answers.get(cid)
        filled = max(known, answer.filled) if answer is not None else known
        total += filled if intent.side is Side.BUY else -filled
    return total


def _closing(core: PackageCore, answers: Mapping[str, OrderEvent]) -> Decimal:
    """Perp short that the package's own buy-backs (reduce-only unwinds) may have closed without anyone
    saying so yet: the unfilled rest of each perp buy whose outcome is unknown or which may still fill. The
    live gateway treats such orders the same way (`Engine.available_short`): a gap in the venue's short is
    theirs to explain before it is charged to anyone as a liquidation."""
    total = Decimal(0)
    for cid, o in core.orders.items():
        if o.intent.role is not LegRole.PERP or o.intent.side is not Side.BUY:
            continue
        answer = answers.get(cid)
        status = answer.status if answer is not None else o.status
        if status in (OrderStatus.UNKNOWN, OrderStatus.SUBMITTING, OrderStatus.OPEN):
            filled = max(o.filled, answer.filled) if answer is not None else o.filled
            total += max(o.intent.amount - filled, Decimal(0))
    return total


async def _check_positions(engine: EngineHost, resumes: list[_Resume], report: RecoveryReport) -> None:
    """Per perp symbol: what the venue holds against what the packages hold. A short the venue no longer
    shows was bought back while we were down (liquidation, ADL): charged to the packages newest first, as
    the gateway charges a live one. Anything else (a position no package holds included) is reported and
    left alone."""
    holders = [
        r
        for r in resumes
        if _perp_after(r.handle.core, r.answers, r.adopted) != 0 or _closing(r.handle.core, r.answers)
    ]

    async def ask() -> Mapping[str, Decimal]:
        with trio.fail_after(engine.config.deadlines.ack * 2):
            return await engine.venue.fetch_positions()

    try:
        positions = await waiting_out_rate_limits(ask, "recovery: fetching positions")
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
        expected = sum((_perp_after(r.handle.core, r.answers, r.adopted) for r in group), Decimal(0))
        held = positions.get(symbol, Decimal(0))
        missing = held - expected  # > 0: less short than the packages hold
        now = trio.current_time()
        closing = sum((_closing(r.handle.core, r.answers) for r in group), Decimal(0))
        if missing > 0 and closing > 0:
            # The packages' own unwinds of unknown outcome may have bought it back: their kill switch asks
            # about them by client id; nothing is charged for what they can explain.
            pending = min(missing, closing)
            missing -= pending
            report.in_flight[symbol] = str(pending)
            engine.journal.record("engine", None, {"event": "recovery_gap_in_flight", "symbol": symbol,
                                  "quantity": str(pending), "venue_position": str(held),
                                  "packages_position": str(expected)}, now)  # fmt: skip
        for r in sorted(group, key=lambda r: r.handle.package_id, reverse=True):
            short = -_perp_after(r.handle.core, r.answers, r.adopted) - _closing(r.handle.core, r.answers)
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
    """Orders with this journal's client-id prefix that no package being recovered knows (the journal lost
    what it wrote about them, e.g. power loss under `durability = "process"`). Open ones: cancelled, then
    whatever they filled unwound with a market order, journaled before it is sent (the order's own record at
    the venue proves the fill). Closed ones that filled and that the journal never wrote (no package's
    intent, no earlier recovery's record): reported and left alone, for an operator."""
    prefix = f"lg{engine.journal.journal_id}"
    set_aside = {cid for pid in report.unproven for cid in _intent_ids(engine, pid)}
    try:
        open_orders = await _open_orders(engine)
    except (trio.TooSlowError, VenueError) as exc:
        log.warning("recovery: cannot list open orders: %s", exc)
        engine.journal.record("engine", None, {"event": "recovery_strays_unchecked", "error": str(exc)},
                              trio.current_time())  # fmt: skip
        return
    swept: set[str] = set()
    for update in open_orders:
        cid = update.client_order_id
        if cid.startswith(prefix) and cid not in engine._orders and cid not in set_aside:
            swept.add(cid)
            report.strays.append(await _adopt(engine, update, prefix))
    await _report_closed_strays(engine, report, prefix, swept)


async def _open_orders(engine: EngineHost) -> list[OrderUpdate]:
    """Every open order at the venue (the heaviest request: Binance weight 80 + 40)."""

    async def ask() -> list[OrderUpdate]:
        with trio.fail_after(engine.config.deadlines.ack * 2):
            return await engine.venue.fetch_open_orders()

    return await waiting_out_rate_limits(ask, "recovery: listing open orders")


def _fetch_order(engine: EngineHost, symbol: str, cid: str) -> Callable[[], Awaitable[OrderUpdate]]:
    async def ask() -> OrderUpdate:
        with trio.fail_after(engine.config.deadlines.ack):
            return await engine.venue.fetch_order(symbol, cid)

    return ask


def _intent_ids(engine: EngineHost, package_id: str) -> set[str]:
    """Every order the journal accounts for in the package: its intents, and the orders an earlier recovery
    adopted after a crash lost their intents (`Adopted` events)."""
    ids = {i.client_order_id for i in engine.journal.intents(package_id)}
    ids |= {e.intent.client_order_id for e in engine.journal.events(package_id) if isinstance(e, Adopted)}
    return ids


async def _report_closed_strays(engine: EngineHost, report: RecoveryReport, prefix: str, swept: set[str]) -> None:
    """Filled, closed orders with our prefix that the journal never wrote, on the journal's symbols (a
    venue that cannot list closed orders is not asked)."""
    fetch_orders = getattr(engine.venue, "fetch_orders", None)
    if fetch_orders is None:
        return
    journal = engine.journal
    symbols = sorted({s for p in journal.packages() for s in (p.plan.spot.symbol, p.plan.perp.symbol)})
    recorded = {str(r.payload.get("client_order_id")) for r in journal.engine_log()
                if r.payload.get("event") in ("adopted_stray_order", "stray_unwind_intent")}  # fmt: skip
    owned: dict[str, set[str]] = {}
    for symbol in symbols:

        async def ask(symbol: str = symbol) -> list[OrderUpdate]:
            with trio.fail_after(engine.config.deadlines.ack * 2):
                got: list[OrderUpdate] = await fetch_orders(symbol)
                return got

        try:
            orders = await waiting_out_rate_limits(ask, f"recovery: listing the orders of {symbol}")
        except (trio.TooSlowError, VenueError) as exc:
            log.warning("recovery: cannot list the orders of %s: %s", symbol, exc)
            journal.record("engine", None, {"event": "recovery_strays_unchecked", "symbol": symbol,
                           "error": str(exc)}, trio.current_time())  # fmt: skip
            continue
        for update in orders:
            cid = update.client_order_id
            if not cid.startswith(prefix) or cid in swept or cid in recorded or update.filled == 0:
                continue
            if update.status is OrderStatus.OPEN or cid in engine._orders:
                continue
            owner = _owner(engine, cid, prefix)
            if owner is not None and cid in owned.setdefault(owner, _intent_ids(engine, owner)):
                continue
            entry = {"client_order_id": cid, "symbol": update.symbol, "side": update.side.value,
                     "filled": str(update.filled), "outcome": UNJOURNALED}  # fmt: skip
            log.error("recovery: order %s (%s %s, filled %s) is not in the journal: left alone", cid,
                      update.symbol, update.side.value, update.filled)  # fmt: skip
            journal.record("engine", None, {"event": "unjournaled_filled_order", **entry}, trio.current_time())
            report.strays.append(entry)


async def _adopt(engine: EngineHost, update: OrderUpdate, prefix: str) -> dict[str, str]:
    cid, symbol = update.client_order_id, update.symbol
    journal = engine.journal
    owner = _owner(engine, cid, prefix)
    entry: dict[str, str] = {"client_order_id": cid, "symbol": symbol, "side": update.side.value}

    async def cancel() -> OrderUpdate:
        with trio.fail_after(engine.config.deadlines.ack):
            return await engine.venue.cancel_order(symbol, cid)

    try:
        final = await waiting_out_rate_limits(cancel, f"recovery: cancelling stray {cid}")
        entry["outcome"] = "cancelled"
    except OrderNotFound:
        final = update  # finished meanwhile: ask below
        entry["outcome"] = "cancelled"
    except (trio.TooSlowError, VenueError) as exc:
        entry["outcome"] = f"cancel failed: {exc}"
        final = update
    if entry["outcome"] == "cancelled":
        try:
            final = await waiting_out_rate_limits(_fetch_order(engine, symbol, cid), f"recovery: re-reading {cid}")
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
    """The journaled package a client id was derived from, if any (ids are `<prefix><number:06d>-...`: six
    digits or more)."""
    number = cid[len(prefix) :].split("-", 1)[0]
    if len(number) < 6 or not number.isdigit():
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
