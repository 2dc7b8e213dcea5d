"""Hypothesis stateful test of `PackageCore` against a small venue model with its own, independent account of
exposure (computed from the venue's fills, never from the core's bookkeeping).

Why drive the pure core synchronously: hypothesis has no async stateful runner, and the core is where every
decision is made — the engine only executes its commands and feeds back what the venue said. Driving the
core directly makes each rule one deterministic step (no scheduler, no clock, no flakiness), lets
hypothesis shrink a failure to the shortest sequence of venue events, and runs thousands of programs a
minute. The venue model here is written separately from the model checker's (fsm/_check.py) on purpose: two
independent models of the same environment, one explored exhaustively within small bounds, this one
sampled deeper (3 perp steps, repeated faults and crashes, longer programs).

Rules: answers to the core's requests (ack / reject / timeout of sends, cancels, queries), resting fills and
expiries on either leg, stale acknowledgements, the fill deadline, shutdown, fault, liquidation, close, and
crash + recovery from the journal. Invariants: exposure and state agree with the venue model; no quiescent
state outside `unwinding` holds unmatched exposure; replaying the journal gives the live core. Teardown
drives the package with cooperative answers only and requires it to end hedged or flat.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from legguard.domain import OrderStatus, RejectReason, Side
from legguard.fsm import (
    CancelOrder,
    CloseRequested,
    Command,
    Dispatch,
    Event,
    ExitDeadline,
    Fault,
    FillDeadline,
    JournalIntent,
    LegPlan,
    LegRole,
    OrderEvent,
    OrphanPolicy,
    PackageCore,
    PackagePlan,
    Purpose,
    QueryOrder,
    Recovered,
    SendOrder,
    Shutdown,
    State,
    Transitioned,
    VenueReduction,
    transition_map,
)

STEP = D("0.001")  # perp step: the package's grid
QTY = 3 * STEP
SPOT_STEP = D("0.00001")
FEE = D("0.001")  # spot buy fee, charged in base
SPOT_PARTS = (STEP, D("0.00023"), D("0.00123"), D("0.00001"))  # one perp step, and off its grid
TABLE = transition_map()


def plan(policy: OrphanPolicy, grossed: bool = True) -> PackagePlan:
    """`grossed`: the spot buy is grossed up for its fee in base (0.00301 holds 0.00300699 against 0.003),
    as the engine plans it; without, as older journals did (0.003 holds 0.002997)."""
    spot = LegPlan("BTC/USDT", Side.BUY, D("61000"), step=SPOT_STEP, dust=SPOT_STEP, fee_rate=FEE if grossed else D(0))
    return PackagePlan(
        package_id="h",
        client_id_prefix="lg-h",
        quantity=QTY,
        spot=replace(spot, amount=spot.gross(QTY)),
        perp=LegPlan("BTC/USDT:USDT", Side.SELL, D("61010"), step=STEP, dust=STEP),
        policy=policy,
    )


@dataclass
class VenueOrder:
    role: LegRole
    side: Side
    amount: D
    status: OrderStatus
    filled: D = D(0)

    @property
    def fee(self) -> D:
        return self.filled * FEE if self.role is LegRole.SPOT and self.side is Side.BUY else D(0)

    def report(self, cid: str) -> OrderEvent:
        return OrderEvent(cid, self.status, filled=self.filled, fee_base=self.fee)


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = PackageCore(plan(OrphanPolicy.FLATTEN))
        self.journal: list[Event] = []
        self.venue: dict[str, VenueOrder] = {}
        self.liquidated = D(0)
        self.inflight: list[tuple[str, str]] = []  # ("send" | "cancel" | "query", cid), duplicates kept
        self.journaled: set[str] = set()
        self.stream = True
        self.deadline_fired = False
        self.unwind_rejects = 0
        self.accidents = 0
        self.was_hedged = False

    # --- plumbing -------------------------------------------------------------------------------------

    def feed(self, ev: Event) -> None:
        self.journal.append(ev)
        commands: list[Command] = self.core.handle(ev)
        if self.core.state is State.HEDGED and not self.was_hedged:
            self.was_hedged = True
            event("reached hedged")
        for c in commands:
            match c:
                case Transitioned(source=s, trigger=t, dest=d):
                    assert TABLE.get((s, t)) is d, f"undocumented transition {s} --{t}--> {d}"
                case JournalIntent(intent=i):
                    self.journaled.add(i.client_order_id)
                case SendOrder(intent=i):
                    assert i.client_order_id in self.journaled, f"{i.client_order_id} sent before its intent"
                    assert ("send", i.client_order_id) not in self.inflight
                    self.inflight.append(("send", i.client_order_id))
                case CancelOrder(client_order_id=cid):
                    self.inflight.append(("cancel", cid))
                case QueryOrder(client_order_id=cid):
                    self.inflight.append(("query", cid))

    def truth(self, cid: str) -> OrderEvent:
        order = self.venue.get(cid)
        if order is None:  # engine: fetch_order -> not found -> rejected/other
            return OrderEvent(cid, OrderStatus.REJECTED, reason=RejectReason.OTHER)
        return order.report(cid)

    def place(self, cid: str) -> VenueOrder:
        """A send reaches the venue: an entry or exit limit rests; an unwind market order fills what it can."""
        intent = self.core.orders[cid].intent
        if intent.purpose is not Purpose.UNWIND:
            order = VenueOrder(intent.role, intent.side, intent.amount, OrderStatus.OPEN)
        else:
            fill = intent.amount if intent.role is LegRole.SPOT else min(intent.amount, self.short())
            status = OrderStatus.CLOSED if fill == intent.amount else OrderStatus.EXPIRED
            order = VenueOrder(intent.role, intent.side, intent.amount, status, max(fill, D(0)))
        self.venue[cid] = order
        return order

    def kill(self, data: st.DataObject) -> tuple[list[str], list[str]]:
        """The actor's requests die: each send may have reached the venue, each cancel may have taken
        effect. Returns (killed sends, orders the killed cancels cancelled)."""
        sends, canceled = [], []
        for kind, cid in self.inflight:
            if kind == "send":
                sends.append(cid)
                if data.draw(st.booleans(), label=f"send {cid} arrived"):
                    self.place(cid)
            elif kind == "cancel":
                order = self.venue.get(cid)
                if order and order.status is OrderStatus.OPEN and data.draw(st.booleans(), label=f"cancel {cid}"):
                    order.status = OrderStatus.CANCELED
                    canceled.append(cid)
        self.inflight.clear()
        return sends, canceled

    def replayed(self) -> PackageCore:
        fresh = PackageCore(self.core.plan)
        for ev in self.journal:
            fresh.handle(ev)
        return fresh

    # --- the independent account -----------------------------------------------------------------------

    def held(self) -> D:
        spot = [o for o in self.venue.values() if o.role is LegRole.SPOT]
        return sum((o.filled - o.fee if o.side is Side.BUY else -o.filled for o in spot), D(0))

    def perp(self) -> D:
        signed = (o.filled if o.side is Side.BUY else -o.filled for o in self.venue.values() if o.role is LegRole.PERP)
        return sum(signed, D(0)) + self.liquidated

    def short(self) -> D:
        return -self.perp()

    def open_at_venue(self) -> list[str]:
        return [cid for cid, o in self.venue.items() if o.status is OrderStatus.OPEN]

    def pending(self, kind: str) -> list[str]:
        return sorted({cid for k, cid in self.inflight if k == kind})

    # --- rules ---------------------------------------------------------------------------------------

    @initialize(
        policy=st.sampled_from(OrphanPolicy),
        opening=st.sampled_from(["sent", "acked", "hedged"]),
        grossed=st.booleans(),
    )
    def dispatch(self, policy: OrphanPolicy, opening: str, grossed: bool) -> None:
        """Dispatch, then optionally fast-forward (both acked / both filled), so that every phase of the
        lifecycle gets its share of programs: few random programs would reach `hedged` on their own."""
        self.core = PackageCore(plan(policy, grossed))
        self.feed(Dispatch())
        event(f"opening: {opening}")
        if opening == "sent":
            return
        for cid in self.pending("send"):
            self.inflight.remove(("send", cid))
            self.feed(self.place(cid).report(cid))
        if opening == "hedged":
            for cid, order in sorted(self.venue.items()):
                order.filled, order.status = order.amount, OrderStatus.CLOSED
                self.feed(order.report(cid))
            assert self.core.state is State.HEDGED

    def live(self) -> bool:
        return self.core.state is not State.FLAT

    @rule()
    def wait(self) -> None:
        """Time passes, nothing happens (and once flat, nothing else can: hypothesis needs a rule to run)."""

    @rule()
    def wait_longer(self) -> None:
        """The same: hypothesis' swarm testing switches rules off per program, and a flat package whose only
        valid rule is switched off is a discarded example."""

    @precondition(lambda self: self.live() and self.accidents < 3)
    @rule(data=st.data())
    def accident(self, data: st.DataObject) -> None:
        """One rule for the rare things, so they do not crowd out the venue's answers."""
        kinds = ["fault", "crash", *(["shutdown"] if self.stream else [])]
        kind = data.draw(st.sampled_from(["nothing"] * len(kinds) + kinds), label="accident")
        if kind == "nothing":  # hypothesis picks enabled rules uniformly: this keeps accidents rarer
            return
        self.accidents += 1
        event(f"accident: {kind} in {self.core.state}")
        {"fault": self.fault, "crash": self.crash, "shutdown": self.shutdown}[kind](data)

    @precondition(lambda self: self.live() and self.pending("send"))
    @rule(data=st.data())
    def answer_send(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.pending("send")), label="send")
        self.inflight.remove(("send", cid))
        intent = self.core.orders[cid].intent
        if intent.purpose is not Purpose.UNWIND:
            outcome = data.draw(st.sampled_from(["ack", "ack", "reject", "timeout"]), label="limit answer")
        else:
            outcomes = ["fill", "fill", "partial", "timeout"] + (["reject"] if self.unwind_rejects < 3 else [])
            outcome = data.draw(st.sampled_from(outcomes), label="unwind answer")
        event(f"send {intent.purpose.value}: {outcome}")
        if outcome == "ack" or outcome == "fill":
            self.feed(self.place(cid).report(cid))
        elif outcome == "reject":
            if intent.purpose is Purpose.UNWIND:
                self.unwind_rejects += 1
                reason = RejectReason.INSUFFICIENT_FUNDS
            else:
                reason = data.draw(
                    st.sampled_from([RejectReason.POST_ONLY_CROSS, RejectReason.INSUFFICIENT_FUNDS,
                                     RejectReason.INVALID_ORDER]), label="reason")  # fmt: skip
            self.feed(OrderEvent(cid, OrderStatus.REJECTED, reason=reason))
        elif outcome == "partial":
            step = SPOT_STEP if intent.role is LegRole.SPOT else STEP
            part = (intent.amount / 2 / step).to_integral_value() * step
            part = min(part, self.short()) if intent.role is LegRole.PERP else part
            if 0 < part < intent.amount:
                self.venue[cid] = VenueOrder(intent.role, intent.side, intent.amount, OrderStatus.EXPIRED, part)
                self.feed(self.venue[cid].report(cid))
            else:
                self.feed(self.place(cid).report(cid))
        else:  # timeout: the order may or may not exist
            if data.draw(st.booleans(), label="arrived anyway"):
                self.place(cid)
            self.feed(OrderEvent(cid, OrderStatus.UNKNOWN))

    @precondition(lambda self: self.live() and self.pending("cancel"))
    @rule(data=st.data(), timeout=st.booleans())
    def answer_cancel(self, data: st.DataObject, timeout: bool) -> None:
        cid = data.draw(st.sampled_from(self.pending("cancel")), label="cancel")
        self.inflight.remove(("cancel", cid))
        order = self.venue.get(cid)
        if timeout:
            if order and order.status is OrderStatus.OPEN and data.draw(st.booleans(), label="took effect"):
                order.status = OrderStatus.CANCELED
            self.feed(OrderEvent(cid, OrderStatus.UNKNOWN))
        elif order and order.status is OrderStatus.OPEN:
            order.status = OrderStatus.CANCELED
            self.feed(order.report(cid))
        else:  # not found (-2011): the engine fetches the order
            self.feed(self.truth(cid))

    @precondition(lambda self: self.live() and self.pending("query"))
    @rule(data=st.data())
    def answer_query(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.pending("query")), label="query")
        self.inflight.remove(("query", cid))
        self.feed(self.truth(cid))

    def report_market(self, cid: str) -> None:
        if self.stream:  # after shutdown the order stream is gone: the venue changes silently
            self.feed(self.venue[cid].report(cid))

    @precondition(lambda self: self.live() and self.open_at_venue())
    @rule(data=st.data(), full=st.booleans())
    def market_fill(self, data: st.DataObject, full: bool) -> None:
        cid = data.draw(st.sampled_from(self.open_at_venue()), label="resting")
        order = self.venue[cid]
        reduce_only = self.core.orders[cid].intent.reduce_only
        room = self.short() if reduce_only else order.amount  # a reduce-only buy never passes flat
        # Spot partial fills land anywhere on the spot's finer grid, off the grid both markets share (issue
        # 10: on-grid partial fills only hid the trim policy ending "hedged" one perp step short).
        part = STEP if order.role is LegRole.PERP else data.draw(st.sampled_from(SPOT_PARTS), label="spot part")
        if reduce_only and order.amount - order.filled > room:
            order.filled, order.status = order.filled + max(room, D(0)), OrderStatus.EXPIRED
        elif full or order.filled + part >= order.amount:
            order.filled, order.status = order.amount, OrderStatus.CLOSED
        else:
            order.filled += part
        self.report_market(cid)

    @precondition(lambda self: self.live() and self.open_at_venue())
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.open_at_venue()), label="expiring")
        self.venue[cid].status = OrderStatus.EXPIRED
        self.report_market(cid)

    @precondition(lambda self: self.live() and self.stream and self.venue)
    @rule(data=st.data())
    def stale_ack(self, data: st.DataObject) -> None:
        entries = sorted(cid for cid in self.venue if self.core.orders[cid].intent.purpose is Purpose.ENTRY)
        if entries:
            self.feed(OrderEvent(data.draw(st.sampled_from(entries), label="stale"), OrderStatus.OPEN))

    @precondition(
        lambda self: (
            self.core.state is State.DISPATCHED and self.stream and not self.deadline_fired and not self.pending("send")
        )  # seconds, where acks take milliseconds
    )
    @rule()
    def fill_deadline(self) -> None:
        self.deadline_fired = True
        self.feed(FillDeadline())

    @precondition(lambda self: self.core.state in (State.HEDGED, State.UNWINDING) and self.stream and self.short() > 0)
    @rule(all_of_it=st.booleans())
    def liquidate(self, all_of_it: bool) -> None:
        quantity = self.short() if all_of_it else STEP
        self.liquidated += quantity
        self.feed(VenueReduction(quantity))

    @precondition(lambda self: self.core.state is State.HEDGED and self.stream)
    @rule(passive=st.booleans())
    def close(self, passive: bool) -> None:
        """An exit: passive post-only limits first (priced by the engine), or straight to aggressive."""
        if passive:
            self.feed(CloseRequested("stateful test", "test", D("61050"), D("60990")))
        else:
            self.feed(CloseRequested("stateful test", "test"))

    @precondition(lambda self: self.core.state is State.UNWINDING and self.core.exit_passive and self.stream)
    @rule()
    def exit_deadline(self) -> None:
        self.feed(ExitDeadline())
        assert not self.core.exit_passive, "the exit deadline passed and the exit is still passive"

    def shutdown(self, data: st.DataObject) -> None:
        # engine/_actor.py: cancellation kills the requests, the shielded drain feeds Shutdown and continues
        # on request/response only; each killed send posts `unknown`.
        sends, _ = self.kill(data)
        self.stream = False
        self.feed(Shutdown())
        for cid in sends:
            self.feed(OrderEvent(cid, OrderStatus.UNKNOWN))

    def fault(self, data: st.DataObject) -> None:
        # The supervisor rebuilds the core from the package's events and feeds Fault first.
        sends, canceled = self.kill(data)
        self.core = self.replayed()
        self.feed(Fault("stateful test"))
        for cid in sends:
            self.feed(OrderEvent(cid, OrderStatus.UNKNOWN))
        if self.stream:
            for cid in canceled:
                self.feed(self.venue[cid].report(cid))

    def crash(self, data: st.DataObject) -> None:
        # Only the journal and the venue survive; engine/_recovery.py asks about every order not known
        # finished (`unknown` if unreachable), feeds the answers, then Recovered.
        self.kill(data)
        self.core = self.replayed()
        self.stream = True
        self.deadline_fired = True  # recovery cancels resting entries itself
        live = [cid for cid, o in self.core.orders.items() if o.live]
        unreachable = data.draw(st.sampled_from([None, *live]), label="unreachable")
        for cid in live:
            self.feed(OrderEvent(cid, OrderStatus.UNKNOWN) if cid == unreachable else self.truth(cid))
        self.feed(Recovered())

    # --- invariants ----------------------------------------------------------------------------------

    @invariant()
    def replay_equals_live(self) -> None:
        assert self.replayed().fingerprint() == self.core.fingerprint()

    @invariant()
    def what_the_engine_may_arm_changes_nothing_and_is_new(self) -> None:
        before = self.core.fingerprint()
        prepared = self.core.provisional_sends()
        assert self.core.fingerprint() == before
        # Orders not sent yet (never an id the core already used), each a fresh unwind or hedge.
        assert all(i.client_order_id not in self.core.orders for i in prepared), prepared
        if prepared:
            event("armed ahead while cancels travel")
        reaction = self.core.provisional_reaction()
        assert self.core.fingerprint() == before
        if reaction is not None:
            # The step prepared for the cancel's expected answer is the one the core takes for that answer.
            answer, commands, twin = reaction
            fresh = self.core.clone()
            assert fresh.handle(answer) == commands and fresh.fingerprint() == twin.fingerprint()
            assert [c.intent for c in commands if isinstance(c, SendOrder)] == prepared
            event("a step prepared for the cancel's answer")

    @invariant()
    def a_cancel_armed_for_an_answer_is_the_cores_own(self) -> None:
        before = self.core.fingerprint()
        armed = self.core.cancels_on_answer()
        assert self.core.fingerprint() == before
        for a in armed:
            answered, cancelled = self.core.orders[a.answer_of], a.order.client_order_id
            assert answered.status is OrderStatus.SUBMITTING, (a, answered.status)
            if a.refused:
                # Every refusal, and an outcome turned unknown: the core cancels the other order.
                answers = [OrderEvent(a.answer_of, OrderStatus.REJECTED, reason=r) for r in RejectReason]
                answers.append(OrderEvent(a.answer_of, OrderStatus.UNKNOWN))
            else:
                # Any fill the resting answer may carry (not only the ones the core tried): the core cancels it.
                amount, price = answered.intent.amount, answered.intent.price
                answers = [OrderEvent(a.answer_of, OrderStatus.OPEN, filled, price)
                           for filled in (D(0), amount / 3, amount - STEP / 10, amount / 2)]  # fmt: skip
            for answer in answers:
                commands = self.core.clone().handle(answer)
                assert CancelOrder(cancelled, a.order.symbol) in commands, (a, answer, commands)
            event("a cancel armed for a refusal" if a.refused else "a cancel armed for a resting answer")

    @invariant()
    def finished_orders_match_the_venue(self) -> None:
        for cid, facts in self.core.orders.items():
            if facts.status.is_terminal:
                truth = self.truth(cid)
                assert facts.filled == truth.filled, (cid, facts.filled, truth.filled)
                assert truth.status.is_terminal, (cid, truth.status)

    @invariant()
    def exposure_agrees_with_the_venue(self) -> None:
        if self.core.open_orders():
            return  # the core is waiting for news; its numbers are a lower bound until then
        exposure = self.core.exposure()
        assert (exposure.spot, exposure.perp) == (self.held(), self.perp())

    @invariant()
    def state_agrees_with_the_venue(self) -> None:
        if self.core.state is State.HEDGED:
            # Held spot (net of the fee kept in base) level with the short to the spot lot step.
            assert abs(self.held() - self.short()) < SPOT_STEP, ("hedged with unequal legs", self.held(), self.short())
        if self.core.state is State.FLAT:
            assert abs(self.held()) < SPOT_STEP and abs(self.perp()) < STEP, ("flat", self.held(), self.perp())
            assert not self.open_at_venue(), ("flat with open orders", self.open_at_venue())
            assert not self.pending("send"), ("flat with sends in flight", self.pending("send"))

    @invariant()
    def never_sells_more_than_is_held(self) -> None:
        selling = sum(
            (o.amount - o.filled for cid, o in self.venue.items()
             if o.role is LegRole.SPOT and o.side is Side.SELL and o.status is OrderStatus.OPEN),
            D(0),
        ) + sum(
            (self.core.orders[cid].intent.amount for cid in self.pending("send")
             if self.core.orders[cid].intent.role is LegRole.SPOT and self.core.orders[cid].intent.side is Side.SELL),
            D(0),
        )  # fmt: skip
        assert self.held() >= 0 and selling <= self.held(), ("oversold", selling, self.held())
        assert self.perp() <= 0, ("bought back past flat", self.perp())

    @invariant()
    def an_exit_never_goes_back_to_hedged(self) -> None:
        assert not (self.core.exiting and self.core.state is State.HEDGED)

    @invariant()
    def quiescent_outside_unwinding_is_matched(self) -> None:
        quiet = not self.open_at_venue() and not self.inflight and self.core.is_quiescent()
        if quiet and self.core.state is not State.UNWINDING:
            assert abs(self.held() + self.perp()) < SPOT_STEP, (self.core.state, self.held(), self.perp())

    def teardown(self) -> None:
        """Liveness without the market's help: answer every request cooperatively (acks, fills, cancels,
        queries) and let the engine's own fill timer fire; the package must end hedged or flat."""
        for _ in range(100):
            if self.core.state in (State.HEDGED, State.FLAT):
                assert not self.core.exiting or self.core.state is State.FLAT, "an exit ended hedged"
                event(f"ends {self.core.state}" + (" after an exit" if self.core.exiting else ""))
                return
            if self.inflight:
                kind, cid = self.inflight.pop(0)
                if kind == "send":
                    self.feed(self.place(cid).report(cid))
                elif kind == "cancel" and cid in self.venue and self.venue[cid].status is OrderStatus.OPEN:
                    self.venue[cid].status = OrderStatus.CANCELED
                    self.feed(self.venue[cid].report(cid))
                else:
                    self.feed(self.truth(cid))
            elif self.core.state is State.DISPATCHED and not self.deadline_fired:
                self.fill_deadline()
            elif self.core.state is State.UNWINDING and self.core.exit_passive:
                self.feed(ExitDeadline())  # the engine's exit timer: the passive limits rest unfilled
            else:
                raise AssertionError(
                    f"stuck in {self.core.state}: nothing in flight, orders {self.core.orders}, venue {self.venue}"
                )
        raise AssertionError(f"no end after 100 cooperative steps: {self.core.state}")


DEFAULT = settings(max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=2500, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestCoreAgainstTheVenueModel(CoreMachine.TestCase):
    settings = DEFAULT


@pytest.mark.fuzz
class TestCoreAgainstTheVenueModelFuzz(CoreMachine.TestCase):
    """`make fuzz` (with --hypothesis-show-statistics): 2,500 programs of up to 40 steps."""

    settings = FUZZ
