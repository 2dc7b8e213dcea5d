"""The package actor: one trio task per package that feeds events from its mailbox into the pure decision
core, journals every step before acting on it, and runs the commands the core returns.

Cancellation never bypasses safety: if the actor is cancelled (engine shutdown, Ctrl-C) its `finally` runs a
shielded drain with its own deadline that feeds `Shutdown` to the core and executes whatever the kill switch
decides, using only request/response calls (the venue's order stream may already be gone).

The kill switch leaves nothing to prepare once its answers arrive: each cancel is signed while its order is in
flight, and while the cancels are in flight the unwind the core will send if they confirm what is known
(`PackageCore.provisional_sends`) is armed, built and signed, and released as it is when the core's
`SendOrder` names an equal intent (armed again only when the answers changed it); when one order is left, the
whole step its cancel's expected answer leads to is prepared too (`PackageCore.provisional_reaction`: decision
on a twin, journal rows encoded) and taken only for an equal answer on the same core. The kill switch's first
cancel, when the core knows it before its decisive answer comes (`PackageCore.cancels_on_answer`), is journaled
(`cancel_armed`) by the step before and armed at the venue, which writes it as it reads that answer. Urgent
events (order events of a naked, orphaned or unwinding package) are taken before the mailbox's other events,
and routine events defer to other packages' urgent ones (`_handle.Precedence`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import cast

import trio

from legguard.adapters._venue import ArmedOrder
from legguard.domain import (
    DuplicateOrder,
    OrderNotFound,
    OrderRejected,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    RateLimited,
    RejectReason,
    VenueError,
)
from legguard.fsm import (
    ArmedCancel,
    CancelOrder,
    Command,
    Dispatch,
    Event,
    ExecutionStyle,
    ExitDeadline,
    Fault,
    FillDeadline,
    OrderEvent,
    OrderIntent,
    PackageCore,
    Purpose,
    QueryOrder,
    SendOrder,
    Shutdown,
    State,
    Transitioned,
)

from . import _crashpoints
from ._crashpoints import ARMED as CRASH_ARMED
from ._handle import WAKE, PackageHandle
from ._host import EngineHost
from .journal import CANCEL_ARMED, PNL, EncodedStep, JournalError, package_pnl
from .journal._store import event_text

log = logging.getLogger("legguard.engine")
# The commands that put a request on the wire.
_REQUESTS = (SendOrder, CancelOrder, QueryOrder)

URGENT_STATES = frozenset({State.ORPHANED, State.UNWINDING})
# A fill deadline is set when a package is dispatched and is due seconds later, usually after the package left
# `dispatched` for good. In these states the core ignores it (no command, nothing changes: a test holds the core
# to that), so the actor does not step it: no journal transaction for nothing (~1 step in 14 of a package).
DEADLINE_INERT = frozenset({State.HEDGED, State.FLAT})


class InjectedCrash(RuntimeError):
    """Raised inside a package actor by the `actor_crash` fault (demo and tests)."""


def to_order_event(update: OrderUpdate) -> OrderEvent:
    return OrderEvent(
        client_order_id=update.client_order_id,
        status=update.status,
        filled=update.filled,
        average=update.average,
        fee_base=update.fee_base,
        fee_quote=update.fee_quote,
        reason=update.reason,
    )


def to_request(intent: OrderIntent) -> OrderRequest:
    return OrderRequest(
        client_order_id=intent.client_order_id,
        symbol=intent.symbol,
        side=intent.side,
        type=intent.type,
        amount=intent.amount,
        price=intent.price,
        post_only=intent.post_only,
        reduce_only=intent.reduce_only,
        ioc=intent.ioc,
    )


class PackageActor:
    """One incarnation of a package's actor. The supervisor starts a new one (same handle) after a fault."""

    # One per live package: slots, not a __dict__ (memory per live package). Weak-referenceable for the timers.
    __slots__ = (
        "__weakref__",
        "_armed",
        "_failed",
        "_follow",
        "_idle",
        "_later",
        "_nursery",
        "_on_answer",
        "_prepared",
        "_stepping",
        "_timers_live",
        "core",
        "engine",
        "first",
        "handle",
    )

    def __init__(self, engine: EngineHost, handle: PackageHandle, first: Sequence[Event] = ()) -> None:
        self.engine = engine
        self.handle = handle
        self.core = handle.core
        self.first = tuple(first)
        self._nursery: trio.Nursery | None = None
        self._timers_live = False  # this incarnation's timers still count (they die with its nursery)
        # Armed while the kill switch's cancels are in flight (`_prearm`): client id -> (intent, armed order).
        self._armed: dict[str, tuple[OrderIntent, ArmedOrder]] | None = None  # None until first armed
        # The step the cancel's expected answer leads to, decided and encoded while the cancel travels (`_prearm`).
        self._prepared: _Prepared | None = None
        # The cancels the venue holds for an answer still travelling (`_arm_cancels`), by (client id answered,
        # client id cancelled): exactly those the core after the last step arms. None while there are none.
        self._on_answer: dict[tuple[str, str], ArmedCancel] | None = None
        # One step at a time: a step yields while its group commits, and the task that read a venue answer
        # may step too (`_answered`). Two steps deciding on the same core would lose one of them.
        self._stepping = False
        self._idle: trio.Event | None = None  # made only when a second task waits for the step in progress
        # A step taken on the submitter's stack (`step_now`) before this actor's task ran: what it spawned waits
        # here for `run`'s nursery, and an error after its commit is raised by `run`, as the step's own.
        self._later: list[tuple[Callable[..., object], tuple[object, ...]]] | None = None
        self._failed: Exception | None = None
        # A leg's rejection read while a step is in progress: stepped by that step's task as soon as it is done.
        self._follow: OrderEvent | None = None

    # --- main loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._timers_live = True
                later, self._later = self._later, None
                if later:  # the sends (and timers) of the dispatch step `step_now` took: first thing
                    for fn, args in later:
                        nursery.start_soon(fn, *args)  # type: ignore[arg-type]
                failed, self._failed = self._failed, None
                if failed is not None:
                    raise failed
                for event in self.first:
                    if isinstance(event, Dispatch) and self.engine.precedence.pending:
                        await self.engine.precedence.defer()  # a new package waits for the kill switch
                    await self.step(event)
                while not self._finished():
                    taken = await self._next_event()
                    if taken is not None:
                        await self.step(taken)
                nursery.cancel_scope.cancel()  # stray timers and late queries
        except BaseException as exc:
            self._timers_live = False
            if is_cancellation(exc) and not self._safe():
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.engine.config.deadlines.unwind
                    await self._drain_to_safety()
            raise
        finally:
            self._timers_live = False
            self._nursery = None
            self._journal_facts()  # answers that arrived after the last step

    def _journal_facts(self) -> None:
        h = self.handle
        if h.facts:
            facts, h.facts = h.facts, []
            with self.engine.journal.batch():
                for kind, payload, at in facts:
                    self.engine.journal.record(kind, h.package_id, _fact_payload(payload), at)

    def _fact_error(self, cid: str, where: str, error: object) -> None:
        # The payload of `Engine.journal_error`, journaled with the next step instead of on its own.
        if not (isinstance(error, OrderRejected) and error.reason is RejectReason.POST_ONLY_CROSS):
            # A post-only entry the book moved through is routine, not an error for the operator's status.
            self.engine.note_error(f"{self.handle.package_id} {cid} {where}: {error}")
        self.handle.facts.append(
            ("order_error", {"client_order_id": cid, "where": where, "error": str(error)}, trio.current_time())
        )

    def _finished(self) -> bool:
        state = self.core.state
        if state is State.FLAT:
            return True
        return state is State.HEDGED and self.engine.stopping and self.core.is_quiescent()

    def _safe(self) -> bool:
        return self.core.state in (State.FLAT, State.HEDGED, State.PENDING) and self.core.is_quiescent()

    async def _drain_to_safety(self) -> None:
        """Shielded: finish the decision for this package without the order stream."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.step(Shutdown())
            while not self._safe():
                taken = await self._next_event(defer=False)
                if taken is not None:
                    await self.step(taken)
            nursery.cancel_scope.cancel()
        if self._safe():
            log.info("package %s safe at shutdown: %s", self.handle.package_id, self.core.state)

    async def _next_event(self, *, defer: bool = True) -> Event | None:
        """The next event to step: the urgent lane first; a routine event waits (at most `PRECEDENCE_WAIT`,
        once, and not while its own package has urgent work) for other packages' urgent events. None: woken
        with nothing to step (a step taken elsewhere may have changed what the caller waits for)."""
        h, precedence = self.handle, self.engine.precedence
        while True:
            urgent = h.take_urgent()
            if urgent is not None:
                return urgent
            if h.held is None:
                event = await h.receive.receive()
                if event is WAKE:
                    return None
                h.held = event  # on the handle: a fault in the urgent step that may come first must not lose it
            if defer and precedence.pending:
                defer = False  # once per event: never starved
                h.waker = trio.Event()
                try:
                    await precedence.defer(h.waker)
                finally:
                    h.waker = None
                continue
            event, h.held = h.held, None
            return event

    # --- one step: decide, journal, act ---------------------------------------------------------------

    async def step(self, event: Event) -> None:
        while self._stepping:  # another task of this actor is inside a step (waiting for its group's commit)
            if self._idle is None:
                self._idle = trio.Event()
            # Shielded: the caller already took `event` from the mailbox, and a cancellation here would drop it.
            # The wait is short (the other step's group commits within its round); the cancellation is
            # delivered at this step's next checkpoint, after the event is stepped.
            with trio.CancelScope(shield=True):
                await self._idle.wait()
        self._stepping = True
        stepped = False
        try:
            await self._step(event)
            stepped = True
        finally:
            self._stepping = False
            idle, self._idle = self._idle, None
            if idle is not None:
                idle.set()
            follow, self._follow = self._follow, None
            if follow is not None and not stepped:
                self.handle.post(follow)  # this step failed or was cancelled: the rejection queues as any event
        if follow is not None:
            await self._answered(follow)

    async def _step(self, event: Event) -> None:
        decided = self._decide(event)
        if decided is None:
            return
        writes, urgent, twin, commands, facts, now, started, armed = decided
        await self.engine.group.commit(writes, urgent=urgent)
        self._committed(event, twin, commands, facts, now, started, armed)

    def step_now(self, event: Event) -> bool:
        """Take `event`'s step on the caller's stack, never yielding (`Engine.submit`'s dispatch): decided,
        committed at once (alone, or taking over the group a leader holds open), then released as `_step`
        does. What needs the actor's nursery (the sends awaiting their answers, timers) waits for `run`, which
        starts it before anything else. False, with nothing committed or released and the core unchanged: the
        step could not be prepared or its commit failed; `run` then takes the step as it always did."""
        try:
            decided = self._decide(event)
            if decided is None:
                return False  # nothing to step here: the actor's own step sees the same
            writes, _urgent, twin, commands, facts, now, started, armed = decided
            self.engine.group.commit_now(writes)
        except Exception as exc:  # the actor meets the same journal (or error) and the supervisor acts on it
            log.warning("package %s: %s not taken on the caller's stack (%s: %s); the actor takes it",
                        self.handle.package_id, event.kind, type(exc).__name__, exc)  # fmt: skip
            return False
        self._later = []
        self._timers_live = True  # its fill deadline counts from now, before `run` starts
        try:
            self._committed(event, twin, commands, facts, now, started, armed)
        except Exception as exc:  # as if raised inside the actor's step: `run` raises it, the supervisor restarts
            self._failed = exc
        return True

    def _decide(
        self, event: Event
    ) -> tuple[list[Callable[[], None]], bool, PackageCore, list[Command], int, float, float, list[ArmedCancel]] | None:
        """The step's decision (on a twin of the core) and its journal rows, prepared: nothing changed yet.
        None: nothing to step."""
        if type(event) is FillDeadline and self.core.state in DEADLINE_INERT:
            return None
        h, engine = self.handle, self.engine
        now = trio.current_time()
        started = time.perf_counter()  # the kill switch's reaction: event in -> its first orders out
        # Decided on a twin that replaces the core only once the journal holds the step: a failed write
        # leaves the core (and the event log it is rebuilt from after the fault) where the journal is. The
        # cancel's answer the kill switch expected was decided and encoded while it travelled (`_prearm`).
        prepared, encoded = self._prepared, None
        if prepared is not None and type(event) is OrderEvent and prepared.ready_for(self.core, event):
            twin, commands, encoded = prepared.twin, list(prepared.commands), prepared.encoded
            engine.stats.prepared_steps += 1
        else:
            twin = self.core.clone()
            commands = twin.handle(event)
        if not commands and type(event) is OrderEvent and twin.fingerprint() == self.core.fingerprint():
            # A report the core already holds: the user stream's copy of an answer already stepped (or the
            # answer after the stream's copy). It changes nothing the core decides on and commands nothing, so
            # there is no effect to journal ahead of and nothing for a replay to miss: no step, no transaction
            # (about one step in four of a package). An answer's `ack` fact waits for the next step.
            return None
        # The kill switch's steps do not wait for the round to fill a group: its cancel or unwind leaves now.
        # Nor does a leg's rejection: the other leg's answer, which decides the kill switch, may be read while
        # this step waits for its round, and would wait for it in turn.
        urgent = twin.state in URGENT_STATES or (isinstance(event, OrderEvent) and event.status is OrderStatus.REJECTED)
        # Write-ahead, grouped: the event and everything it caused are durable before any effect starts; the
        # venue's answers behind it (audited facts, never replayed: the event row holds what the core decided
        # on) commit in the same transaction, ahead of the step's rows; the transaction is shared with the
        # other steps of this scheduler round (`_group.GroupCommit`). An urgent step leaves its facts to the
        # package's next routine step (or the actor's end): encoding and inserting them cost ~30-40 µs in the
        # run, between the decisive answer and the kill switch's cancel.
        journal, facts = engine.journal, 0 if urgent else len(h.facts)
        pid, prepare_fact = h.package_id, journal.prepare_fact
        writes = [prepare_fact(kind, pid, _fact_payload(payload), at) for kind, payload, at in h.facts[:facts]]
        if encoded is not None:
            writes.append(journal.bind_step(encoded, now))
        else:
            writes.append(journal.prepare_step(h.package_id, event, commands, twin.state, twin.exposure(), now))
        if twin.state is State.FLAT and any(type(c) is Transitioned and c.dest is State.FLAT for c in commands):
            # The package's accounting, in the transaction of the step that made it flat (it was one of its own).
            writes.append(journal.prepare_fact(PNL, h.package_id, package_pnl(twin, h.funding).to_dict(), now))
        # A cancel the core after this step sends the moment an answer still travelling comes (an order answered
        # resting after the other leg was refused; a naked leg's other leg refused): journaled here, so that a
        # venue able to write it the moment it reads that answer may do so before the answer's own step
        # (`cancel_on_answer`). That step commands the same cancel, which the venue then finds on its way.
        # Asked only of a step that sends nothing (the refusal that came first, the naked leg's answer): the
        # twins it takes (~50-150 µs) must not delay a step's own requests, e.g. a maker-taker hedge. A step that
        # sends arms nothing and disarms what was armed: the cancel then leaves from the answer's step.
        armed = (
            twin.cancels_on_answer()
            if engine.cancel_on_answer is not None and not any(type(c) in _REQUESTS for c in commands)
            else []
        )
        held = self._on_answer
        for a in armed:
            if held is not None and (a.answer_of, a.order.client_order_id) in held:
                continue  # armed (and journaled) by an earlier step
            payload = {"client_order_id": a.order.client_order_id, "symbol": a.order.symbol,
                       "answer_of": a.answer_of, "when": "refused" if a.refused else "rests"}  # fmt: skip
            writes.append(journal.prepare_fact(CANCEL_ARMED, pid, payload, now))
        return writes, urgent, twin, commands, facts, now, started, armed

    def _committed(
        self,
        event: Event,
        twin: PackageCore,
        commands: list[Command],
        facts: int,
        now: float,
        started: float,
        armed: Sequence[ArmedCancel] = (),
    ) -> None:
        """After the step's commit: the core swapped in, its effects released, then its bookkeeping."""
        h, engine = self.handle, self.engine
        if facts:
            del h.facts[:facts]  # answers that arrived while the group committed wait for the next step
        self.core = h.core = twin
        h.events.append(event)
        if CRASH_ARMED:
            _crashpoints.after_step(self.core, commands, engine.journal)
        # Effects first, right after the commit: the kill switch's cancel and every order leave before the
        # step's bookkeeping (exposure, timers, observers), which nothing on the wire waits for.
        sends: list[OrderIntent] = []
        for command in commands:
            match command:
                case SendOrder(intent=intent):
                    sends.append(intent)
                case CancelOrder(client_order_id=cid, symbol=symbol):
                    # The kill switch's first move leaves from here, right after the journal, when the venue
                    # can write it synchronously; the task only awaits the answer.
                    release_cancel = getattr(engine.venue, "release_cancel", None)
                    if release_cancel is not None:
                        release_cancel(symbol, cid)
                    self._spawn(self._cancel, cid, symbol)
                case QueryOrder(client_order_id=cid, symbol=symbol):
                    self._spawn(self._query, cid, symbol, 0.0)
        if self._on_answer is not None or armed:
            self._arm_cancels(event, commands, armed)
        if sends:
            delay = retry_backoff(sends)
            # Asked of the core only for a hedge (IOC): not on the unwind's path, whose market order is not.
            throttled = self.core.throttled_hedges() if any(i.ioc for i in sends) else 0
            if throttled:
                # The request budget refused the last hedge: give it time to refill (20 units/s on Binance).
                delay = max(delay, min(0.1 * 2 ** (throttled - 1), 1.0))
            if delay > 0:
                self._spawn(self._release_after, delay, sends)
            else:
                self._release(sends)
        self._track_exposure(now)
        if (
            self.core.state is State.DISPATCHED
            and h.naked_since is not None
            and not h.leg_timer_started
            # maker-taker answers each maker fill with an immediate hedge: no leg waits on the market.
            and self.core.plan.style is not ExecutionStyle.MAKER_TAKER
        ):
            # One leg has filled more than the other: that is naked exposure, so the other leg gets only the
            # (short) leg deadline to catch up, not what is left of the fill deadline.
            h.leg_timer_started = True
            self._spawn(self._leg_deadline)
        if self.core.state is State.UNWINDING and not h.exit_leg_timer_started and self.core.exit_naked():
            # The passive exit closed (part of) one side and the other still rests: the same leg deadline
            # bounds how long that lasts before the kill switch's aggressive orders take over.
            h.exit_leg_timer_started = True
            self._spawn(self._exit_deadline, engine.config.deadlines.leg)
        h.pulse()
        for command in commands:
            if isinstance(command, Transitioned):
                engine.on_transition(h, command, now)
                if command.dest is State.DISPATCHED:
                    self._start_fill_deadline()
                elif command.dest is State.UNWINDING and command.source is State.HEDGED and self.core.exit_passive:
                    self._spawn(self._exit_deadline, engine.config.exit.deadline)
                elif command.dest is State.UNWINDING:
                    # Entering the kill switch, or escalating a passive exit into it: the unwind deadline runs.
                    self._spawn(self._unwind_watchdog)
                    if command.source is State.ORPHANED:
                        engine.note_reaction(time.perf_counter() - started)
        self._prearm()  # after the step's own orders left: off the path it decided
        if h.crash_on_event is not None and len(h.events) >= h.crash_on_event:
            h.crash_on_event = None
            raise InjectedCrash(f"injected actor crash at event {len(h.events)} ({event.kind})")

    def _arm_cancels(self, event: Event, commands: Sequence[Command], armed: Sequence[ArmedCancel]) -> None:
        """After the commit that journaled them (`cancel_armed`): the venue holds exactly the cancels the core
        now arms (`cancels_on_answer`), each written as soon as the venue reads the answer it waits for, before
        that answer is decoded or stepped; the answer's step commands the same cancel, which the venue then
        finds written (its task only awaits the cancel's answer). One this step no longer arms is disarmed.

        Should a cancel have left on an answer whose step did not command it (the core changed its mind in a
        step taken meanwhile; the venue does not count a duplicate answer as a refusal, `_duplicate`), its
        answer is read all the same and stepped: the core learns what it did (no request left unanswered, no
        order cancelled behind the package's back)."""
        venue, held = self.engine.venue, self._on_answer or {}
        wanted = {(a.answer_of, a.order.client_order_id): a for a in armed}
        if type(event) is OrderEvent:
            written = getattr(venue, "cancel_written", None)
            for (answer_of, cid), a in held.items():
                if answer_of != event.client_order_id or (answer_of, cid) in wanted:
                    continue
                if any(type(c) is CancelOrder and c.client_order_id == cid for c in commands):
                    continue
                if written is not None and written(cid):
                    log.warning("package %s: the cancel of %s left on the answer to %s, not commanded by its "
                                "step; reading its answer", self.handle.package_id, cid, answer_of)  # fmt: skip
                    self._spawn(self._cancel, cid, a.order.symbol)
        disarm = getattr(venue, "disarm_cancel", None)
        for key in held.keys() - wanted.keys():
            if disarm is not None:
                disarm(*key)
        arm = self.engine.cancel_on_answer
        for key, a in wanted.items():
            if key not in held and arm is not None:
                arm(a.answer_of, a.refused, a.order.symbol, a.order.client_order_id)
        self._on_answer = wanted or None

    def _prearm(self) -> None:
        """Arm (build, sign) what the core sends once the cancels in flight confirm what is known now (the
        kill switch's unwind), so that the step deciding it only releases it. Armed again only when what is
        known changed (a fill or a fee reported meanwhile); never sent by itself. A refusal here is left to
        that step, which arms again and reports it as usual."""
        # Whatever was prepared before was for an earlier core: a step that changed nothing (a stream report
        # the core already holds) keeps the core, and what was prepared on it, as they are.
        self._prepared = None
        reaction = self.core.provisional_reaction(self._fees_known)
        if reaction is not None:
            # One order left, its cancel in flight: its expected answer's whole step is prepared, not only the
            # unwind's order (the decision and its journal rows: ~100 µs of the unwind's path in the run).
            answer, commands, twin = reaction
            try:
                encoded = self.engine.journal.encode_step(self.handle.package_id, answer, commands, twin.state,
                                                          twin.exposure())  # fmt: skip
            except JournalError:
                encoded = None  # the step itself will say what is wrong
            if encoded is not None:
                self._prepared = _Prepared(self.core, answer, event_text(answer), tuple(commands), twin, encoded)
            intents = [c.intent for c in commands if type(c) is SendOrder]
        else:
            intents = self.core.provisional_sends()
        if not intents:
            self._armed = None
            return
        armed = self._armed if self._armed is not None else {}
        wanted = {i.client_order_id for i in intents}
        for cid in [cid for cid in armed if cid not in wanted]:
            del armed[cid]
        for intent in intents:
            held = armed.get(intent.client_order_id)
            if held is not None and held[0] == intent:
                continue
            try:
                armed[intent.client_order_id] = (intent, self.engine.venue.arm(to_request(intent)))
            except VenueError:
                armed.pop(intent.client_order_id, None)
        self._armed = armed or None

    def _fees_known(self, symbol: str, cid: str, filled: Decimal) -> tuple[Decimal, Decimal] | None:
        # The fees a venue that keeps a fee ledger (`CcxtVenue.fees_known`) will report in the cancel's answer.
        known = getattr(self.engine.venue, "fees_known", None)
        return None if known is None else cast("tuple[Decimal, Decimal] | None", known(symbol, cid, filled))

    def _arm(self, intent: OrderIntent) -> ArmedOrder:
        """The order armed ahead when it is exactly what the core now sends; else armed now."""
        held = self._armed.pop(intent.client_order_id, None) if self._armed else None
        if held is not None:
            if held[0] == intent:
                self.engine.stats.armed_ahead += 1
                return held[1]
            self.engine.stats.rearmed += 1
        return self.engine.venue.arm(to_request(intent))

    def _track_exposure(self, now: float) -> None:
        h = self.handle
        # Flat leaves at most untradable dust (spot fees charged in base); that is not naked exposure.
        naked = self.core.state is not State.FLAT and self.core.unmatched() > 0
        if naked and h.naked_since is None:
            h.naked_since = now
        elif not naked and h.naked_since is not None:
            h.max_naked = max(h.max_naked, now - h.naked_since)
            self.engine.note_naked(now - h.naked_since)
            h.naked_since = None

    def _spawn(self, fn: Callable[..., object], *args: object) -> None:
        if self._nursery is None and self._later is not None:
            self._later.append((fn, args))  # a step taken on the submitter's stack: `run` starts it
            return
        assert self._nursery is not None, "actor commands run inside the actor's nursery"
        self._nursery.start_soon(fn, *args)  # type: ignore[arg-type]

    # --- effects: each reports back through the mailbox as an OrderEvent ------------------------------

    def _release(self, intents: list[OrderIntent]) -> None:
        """Arm every leg first (validation, signing), then start all sends together: never one leg
        awaited before the other."""
        armed: list[ArmedOrder] = []
        for intent in intents:
            self.engine.register_order(intent.client_order_id, self.handle)
            self.handle.sent_at[intent.client_order_id] = trio.current_time()
            try:
                armed.append(self._arm(intent))
            except OrderRejected as exc:
                self.handle.post(OrderEvent(intent.client_order_id, OrderStatus.REJECTED, reason=exc.reason))
                self.engine.journal_error(self.handle.package_id, intent.client_order_id, "arm", exc)
        # A venue that can put armed orders on the wire itself does so here, back to back, before any task
        # switch; the send tasks then only await the answers.
        release = getattr(self.engine.venue, "release", None)
        if release is not None and armed:
            release(armed)
        for a in armed:
            self._spawn(self._send, a)

    async def _answered(self, event: OrderEvent) -> None:
        """The venue's answer to one of this actor's own requests, read by the task that made it: stepped
        right here, without a hop through the mailbox, unless urgent events wait ahead of it, the package
        is finished, or a step is in progress (waiting for its group's commit): then it queues as any event,
        except a leg's rejection, which the task of the step in progress steps next (`step`)."""
        h = self.handle
        if h.urgent or self._finished() or self._stepping:
            if self._stepping and self._follow is None and not h.urgent and event.status is OrderStatus.REJECTED:
                # A leg's rejection read while the other leg's answer is stepped (its group commits): the rejection
                # may be what decides the kill switch, so the task of the step in progress steps it as soon as
                # that step is done (`step`), without a hop through the mailbox to the actor's loop.
                self._follow = event
                return
            h.post(event)
            return
        await self.step(event)
        if self._finished() or self._safe():
            h.post(WAKE)  # the loop waiting on the mailbox looks at its condition again

    async def _release_after(self, delay: float, intents: list[OrderIntent]) -> None:
        try:
            await trio.sleep(delay)
        except trio.Cancelled:
            # Cancelled during the back-off (shutdown): journaled, never sent. Say so, or the shutdown drain
            # waits for an answer no task will post and leaves the package unwinding. Never released, the
            # query that `unknown` leads to concludes at once (no recvWindow to wait out).
            for intent in intents:
                self.handle.post(OrderEvent(intent.client_order_id, OrderStatus.UNKNOWN))
            raise
        self._release(intents)

    async def _send(self, armed: ArmedOrder) -> None:
        cid, symbol = armed.request.client_order_id, armed.request.symbol
        h, engine = self.handle, self.engine
        try:
            with trio.fail_after(engine.config.deadlines.ack):
                ack = await engine.venue.fire(armed)
        except trio.TooSlowError as exc:
            engine.outage.suspect(exc)
            self._fact_error(cid, "send", "acknowledgement deadline passed")
            # Conservative on purpose: even when the order stream already showed the order, a lost answer
            # sends the package through the kill switch, which settles the order by client id.
            h.post(OrderEvent(cid, OrderStatus.UNKNOWN))
            return
        except OrderRejected as exc:
            if CRASH_ARMED:
                self._crash_if_cancelled_on_answer(cid)
            if exc.reason is RejectReason.REDUCE_ONLY_REJECTED:
                # The venue holds less short than we believe (reduced while unseen): find out how much.
                self._spawn(engine.reconcile_short, symbol, h)
            self._fact_error(cid, "send", exc)
            await self._answered(OrderEvent(cid, OrderStatus.REJECTED, reason=exc.reason))
            return
        except DuplicateOrder:
            # It exists: fetch it, never resend.
            await self._query(cid, symbol, 0.0)
            return
        except RateLimited as exc:
            # A throttled request was refused whole; back off new packages.
            engine.on_rate_limited(exc)
            h.post(OrderEvent(cid, OrderStatus.REJECTED, reason=RejectReason.RATE_LIMITED))
            return
        except VenueError as exc:
            engine.outage.suspect(exc)
            self._fact_error(cid, "send", exc)
            h.post(OrderEvent(cid, OrderStatus.UNKNOWN))
            return
        except trio.Cancelled:
            h.post(OrderEvent(cid, OrderStatus.UNKNOWN))  # cancelled in flight: the order may exist
            raise
        if CRASH_ARMED:
            self._crash_if_cancelled_on_answer(cid)
            _crashpoints.after_send(self.core.orders[cid].intent)
        h.facts.append(("ack", ack, trio.current_time()))
        await self._answered(to_order_event(ack))

    def _crash_if_cancelled_on_answer(self, answered: str) -> None:
        written = getattr(self.engine.venue, "cancel_written", None)
        if written is not None and any(a == answered and written(cid) for a, cid in self._on_answer or ()):
            _crashpoints.cancel_on_answer()

    async def _cancel(self, cid: str, symbol: str) -> None:
        h, engine = self.handle, self.engine
        try:
            with trio.fail_after(engine.config.deadlines.ack):
                update = await engine.venue.cancel_order(symbol, cid)
        except OrderNotFound:
            await self._query(cid, symbol, 0.0)  # already finished (filled?) or never arrived
            return
        except (trio.TooSlowError, VenueError) as exc:
            engine.outage.suspect(exc)
            engine.journal_error(h.package_id, cid, "cancel", exc)
            h.post(OrderEvent(cid, OrderStatus.UNKNOWN))
            return
        await self._answered(to_order_event(update))

    async def _query(self, cid: str, symbol: str, backoff: float) -> None:
        h, engine = self.handle, self.engine
        if backoff:
            await trio.sleep(backoff)
            await engine.outage.wait_up()  # while the venue is down, ask again once it answers
        try:
            with trio.fail_after(engine.config.deadlines.ack):
                update = await engine.venue.fetch_order(symbol, cid)
        except OrderNotFound:
            # A request can still reach the matching engine long after an error answer or a timeout (a busy
            # gateway holds it): "not found" is final only once the order can no longer be accepted, i.e. its
            # recvWindow from the signed timestamp (never later than the release) has passed, plus how far the
            # venue's clock may lag ours. Until then keep asking.
            sent = h.sent_at.get(cid)
            d = engine.config.deadlines
            grace_until = None if sent is None else sent + d.recv_window + d.clock_allowance
            if grace_until is not None and trio.current_time() < grace_until:
                wait = min(max(backoff * 2, 0.05), 1.0, grace_until - trio.current_time())
                self._spawn(self._query, cid, symbol, wait)
                return
            h.post(OrderEvent(cid, OrderStatus.REJECTED, reason=RejectReason.OTHER))
            return
        except (trio.TooSlowError, VenueError) as exc:
            engine.outage.suspect(exc)
            engine.journal_error(h.package_id, cid, "query", exc)
            # Escalate: back off and ask again; the core keeps the leg unknown meanwhile.
            self._spawn(self._query, cid, symbol, min(max(backoff * 2, 0.05), 2.0))
            return
        await self._answered(to_order_event(update))

    async def _unwind_watchdog(self) -> None:
        outage = self.engine.outage
        await trio.sleep(self.engine.config.deadlines.unwind)
        while outage.down and self.core.state is State.UNWINDING:
            # Nothing can be unwound while the venue does not answer: the deadline starts again when it does
            # (the outage itself already stops new packages).
            await outage.wait_up()
            await trio.sleep(self.engine.config.deadlines.unwind)
        if self.core.state is State.UNWINDING:
            self.engine.on_unwind_overdue(self.handle)

    async def _leg_deadline(self) -> None:
        await trio.sleep(self.engine.config.deadlines.leg)
        await self.engine.outage.wait_up()  # a cancel cannot reach a venue that is down: decide once it answers
        self.handle.post(FillDeadline())

    async def _exit_deadline(self, seconds: float) -> None:
        await trio.sleep(seconds)
        if self.core.exit_passive:
            self.handle.post(ExitDeadline())

    def _start_fill_deadline(self) -> None:
        timers = self.engine.timers
        if timers.running:
            # The engine's one timer task, not a task per package (memory per live package).
            timers.call_at(trio.current_time() + self.engine.config.deadlines.fill, self)
        else:
            self._spawn(self._fill_deadline)

    def on_timer(self) -> None:
        """The fill deadline is due (the engine's timer task calls this)."""
        if not self._timers_live:
            return  # this incarnation is over: its timers went with it, as its tasks did
        if self.engine.outage.down:
            self._spawn(self._fill_after_outage)
        else:
            self.handle.post(FillDeadline())

    async def _fill_deadline(self) -> None:
        await trio.sleep(self.engine.config.deadlines.fill)
        await self._fill_after_outage()

    async def _fill_after_outage(self) -> None:
        await self.engine.outage.wait_up()
        self.handle.post(FillDeadline())


class _Prepared:
    """A step decided ahead (`PackageActor._prearm`): the answer expected, the commands the core returns for
    it, the core after it and its journal rows. Taken only for an equal answer on the very core it was decided
    on (any step replaces the core object), so the core stays the only authority and the journal's rows are
    those the step would have made: equal events whose rows spell alike decide alike."""

    __slots__ = ("answer", "base", "commands", "encoded", "text", "twin")

    def __init__(
        self,
        base: PackageCore,
        answer: OrderEvent,
        text: str,
        commands: tuple[Command, ...],
        twin: PackageCore,
        encoded: EncodedStep,
    ) -> None:
        self.base, self.answer, self.text, self.commands, self.twin, self.encoded = (
            base, answer, text, commands, twin, encoded,
        )  # fmt: skip

    def ready_for(self, core: PackageCore, event: OrderEvent) -> bool:
        # `==` on Decimals is numeric (0.5 == 0.50): the row's text tells the spellings apart, and the core
        # after the step holds the event's own numbers, so both must agree.
        return core is self.base and event == self.answer and event_text(event) == self.text


def _fact_payload(payload: dict[str, object] | OrderUpdate) -> dict[str, object]:
    return _update_payload(payload) if isinstance(payload, OrderUpdate) else payload


def _update_payload(update: OrderUpdate) -> dict[str, object]:
    return {
        "client_order_id": update.client_order_id,
        "venue_order_id": update.venue_order_id,
        "status": update.status.value,
        "filled": str(update.filled),
        "average": None if update.average is None else str(update.average),
    }


def retry_backoff(intents: list[OrderIntent]) -> float:
    """Unwind retries escalate with exponential back-off (20 ms, 40 ms, ... capped at 1 s); first attempts
    and entries go at once."""
    attempt = max((i.attempt for i in intents if i.purpose is Purpose.UNWIND), default=0)
    return 0.0 if attempt == 0 else min(0.02 * 2 ** (attempt - 1), 1.0)


def is_cancellation(exc: BaseException) -> bool:
    """True when `exc` is trio cancellation (or Ctrl-C), possibly wrapped in exception groups, and carries
    no real error."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_cancellation(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled | KeyboardInterrupt)


def crash_of(exc: BaseException) -> BaseException | None:
    """The first real error inside `exc` (unwrapping groups), or None if it is only cancellation."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = crash_of(inner)
            if found is not None:
                return found
        return None
    return None if isinstance(exc, trio.Cancelled | KeyboardInterrupt) else exc


def fault_event(exc: BaseException) -> Fault:
    return Fault(detail=f"{type(exc).__name__}: {exc}")
