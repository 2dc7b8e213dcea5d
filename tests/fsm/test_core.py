"""Scenario tests of `PackageCore`, synchronously: each feeds events and asserts the lifecycle state, the exact
commands (transitions compared as (source, trigger, dest)) and the exposure.

The plan is BTC-like: 0.002 BTC = 2 perp steps; spot trades on a 100x finer grid and the spot buy fee
(0.1 %) is charged in BTC, so the spot actually held is less than what filled.
"""

from __future__ import annotations

from dataclasses import fields
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legguard.domain import OrderStatus, OrderType, RejectReason, Side
from legguard.fsm import (
    Abort,
    ArmedCancel,
    CancelOrder,
    CloseRequested,
    Command,
    Dispatch,
    Event,
    Fault,
    FillDeadline,
    InvalidTransition,
    JournalIntent,
    LegPlan,
    LegRole,
    OrderEvent,
    OrderFacts,
    OrderIntent,
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
    Trigger,
    VenueReduction,
)

S, T = State, Trigger
Q = D("0.002")
HALF = D("0.001")
FEE = D("0.001")  # spot fee rate, charged in base on buys

SE0, PE0 = "lg-t-SE0", "lg-t-PE0"
SU0, SU1, PU0, PU1 = "lg-t-SU0", "lg-t-SU1", "lg-t-PU0", "lg-t-PU1"


def make_plan(policy: OrphanPolicy = OrphanPolicy.FLATTEN, spot_dust: str = "0.00001") -> PackagePlan:
    return PackagePlan(
        package_id="t",
        client_id_prefix="lg-t",
        quantity=Q,
        spot=LegPlan("BTC/USDT", Side.BUY, D("60000"), step=D("0.00001"), dust=D(spot_dust)),
        perp=LegPlan("BTC/USDT:USDT", Side.SELL, D("60012"), step=D("0.001"), dust=D("0.001")),
        policy=policy,
    )


def entry(role: LegRole) -> OrderIntent:
    if role is LegRole.SPOT:
        return OrderIntent(SE0, role, Purpose.ENTRY, 0, "BTC/USDT", Side.BUY, OrderType.LIMIT, Q, D("60000"),
                           post_only=True, reduce_only=False)  # fmt: skip
    return OrderIntent(PE0, role, Purpose.ENTRY, 0, "BTC/USDT:USDT", Side.SELL, OrderType.LIMIT, Q, D("60012"),
                       post_only=True, reduce_only=False)  # fmt: skip


def unwind(role: LegRole, attempt: int, amount: str) -> OrderIntent:
    if role is LegRole.SPOT:
        return OrderIntent(f"lg-t-SU{attempt}", role, Purpose.UNWIND, attempt, "BTC/USDT", Side.SELL,
                           OrderType.MARKET, D(amount), None, post_only=False, reduce_only=False)  # fmt: skip
    return OrderIntent(f"lg-t-PU{attempt}", role, Purpose.UNWIND, attempt, "BTC/USDT:USDT", Side.BUY,
                       OrderType.MARKET, D(amount), None, post_only=False, reduce_only=True)  # fmt: skip


def spot_fee(filled: D) -> D:
    return filled * FEE


def ev(cid: str, status: OrderStatus, filled: D | str = "0", reason: RejectReason | None = None) -> OrderEvent:
    """A venue report; spot entry buys carry their base-asset fee like Binance's."""
    filled = D(filled)
    fee = spot_fee(filled) if cid == SE0 else D(0)
    return OrderEvent(cid, status, filled=filled, fee_base=fee, reason=reason)


def shape(commands: list[Command]) -> list[object]:
    """Commands with transitions reduced to (source, trigger, dest): the reason text is for humans."""
    return [(c.source, c.trigger, c.dest) if isinstance(c, Transitioned) else c for c in commands]


def send(*intents: OrderIntent) -> list[object]:
    """Write-ahead then release together: every JournalIntent, then every SendOrder."""
    return [*(JournalIntent(i) for i in intents), *(SendOrder(i) for i in intents)]


DISPATCH_COMMANDS = [
    JournalIntent(entry(LegRole.SPOT)),
    JournalIntent(entry(LegRole.PERP)),
    (S.PENDING, T.DISPATCH, S.DISPATCHED),
    SendOrder(entry(LegRole.SPOT)),
    SendOrder(entry(LegRole.PERP)),
]
KILL = [(S.DISPATCHED, T.LEG_BROKEN, S.ORPHANED), (S.ORPHANED, T.UNWIND, S.UNWINDING)]


class Driver:
    """A core plus the events fed to it, so any test can also check journal replay."""

    def __init__(self, policy: OrphanPolicy = OrphanPolicy.FLATTEN, spot_dust: str = "0.00001") -> None:
        self.core = PackageCore(make_plan(policy, spot_dust))
        self.events: list[Event] = []

    def __call__(self, *events: Event) -> list[object]:
        out: list[Command] = []
        for e in events:
            self.events.append(e)
            out += self.core.handle(e)
        return shape(out)

    @property
    def state(self) -> State:
        return self.core.state

    def exposure(self) -> tuple[D, D, bool]:
        x = self.core.exposure()
        return x.spot, x.perp, x.unknown

    def replayed(self) -> PackageCore:
        fresh = PackageCore(self.core.plan)
        for e in self.events:
            fresh.handle(e)
        return fresh


def acked() -> Driver:
    d = Driver()
    d(Dispatch(), ev(SE0, OrderStatus.OPEN), ev(PE0, OrderStatus.OPEN))
    return d


def hedged(policy: OrphanPolicy = OrphanPolicy.FLATTEN) -> Driver:
    d = Driver(policy)
    d(Dispatch(), ev(SE0, OrderStatus.OPEN), ev(PE0, OrderStatus.OPEN), ev(SE0, OrderStatus.CLOSED, Q))
    assert d(ev(PE0, OrderStatus.CLOSED, Q)) == [(S.DISPATCHED, T.HEDGE, S.HEDGED)]
    return d


# --- the happy path -------------------------------------------------------------------------------------


def test_normal_hedge() -> None:
    d = Driver()

    assert d(Dispatch()) == DISPATCH_COMMANDS
    assert d.exposure() == (0, 0, True)  # both sends unanswered: outcome not known yet
    assert d(ev(SE0, OrderStatus.OPEN), ev(PE0, OrderStatus.OPEN)) == []
    assert d(ev(SE0, OrderStatus.CLOSED, Q)) == []  # one leg filled is not a hedge
    assert d.state is S.DISPATCHED
    cmds = d(ev(PE0, OrderStatus.CLOSED, Q))

    assert cmds == [(S.DISPATCHED, T.HEDGE, S.HEDGED)]
    assert d.exposure() == (Q - spot_fee(Q), -Q, False)
    assert d.core.unmatched() == 0
    assert d.core.is_quiescent()


def test_acknowledgements_never_decide() -> None:
    d = Driver()
    d(Dispatch())

    cmds = d(ev(SE0, OrderStatus.OPEN), ev(PE0, OrderStatus.OPEN))

    assert cmds == []
    assert d.state is S.DISPATCHED
    assert not d.core.is_quiescent()


def test_abort_before_dispatch_is_flat_and_sends_nothing() -> None:
    d = Driver()

    assert d(Abort("stale book")) == [(S.PENDING, T.ABORT, S.FLAT)]
    assert d.core.orders == {}
    with pytest.raises(InvalidTransition, match="'dispatch' is not allowed in state 'flat'"):
        d(Dispatch())


# --- rejects, on each leg, with and without fills on the other leg --------------------------------------

REJECTS = [RejectReason.POST_ONLY_CROSS, RejectReason.INSUFFICIENT_FUNDS, RejectReason.INVALID_ORDER]
OTHER = {SE0: PE0, PE0: SE0}


@pytest.mark.parametrize("reason", REJECTS)
@pytest.mark.parametrize("rejected", [SE0, PE0])
def test_reject_without_fills_on_the_other_leg_voids(rejected: str, reason: RejectReason) -> None:
    d = Driver()
    other = OTHER[rejected]
    d(Dispatch(), ev(other, OrderStatus.OPEN))

    # The dead leg leaves nothing unmatched yet: cancel what rests and decide once both are terminal.
    assert d(ev(rejected, OrderStatus.REJECTED, reason=reason)) == [
        CancelOrder(other, d.core.orders[other].intent.symbol)
    ]
    assert d.state is S.DISPATCHED
    assert d(ev(other, OrderStatus.CANCELED)) == [(S.DISPATCHED, T.VOID, S.FLAT)]
    assert d.exposure() == (0, 0, False)
    assert d.core.orders[rejected].reason == reason.value


@pytest.mark.parametrize("reason", REJECTS)
@pytest.mark.parametrize(
    ("rejected", "unwind_role", "unwind_amount"),
    [(PE0, LegRole.SPOT, "0.00099"), (SE0, LegRole.PERP, "0.001")],
)
def test_reject_with_a_partial_fill_on_the_other_leg_unwinds_it(
    rejected: str, unwind_role: LegRole, unwind_amount: str, reason: RejectReason
) -> None:
    d = Driver()
    other = OTHER[rejected]
    d(Dispatch(), ev(other, OrderStatus.OPEN), ev(other, OrderStatus.OPEN, HALF))
    symbol = d.core.orders[other].intent.symbol

    cmds = d(ev(rejected, OrderStatus.REJECTED, reason=reason))

    assert cmds == [*KILL, CancelOrder(other, symbol)]
    assert d.core.lifecycle.state == "unwinding"
    # Unwind only once the partially filled leg is terminal: it may still fill while the cancel travels.
    u = unwind(unwind_role, 0, unwind_amount)
    assert d(ev(other, OrderStatus.CANCELED, HALF)) == send(u)
    assert d(ev(u.client_order_id, OrderStatus.CLOSED, u.amount)) == [(S.UNWINDING, T.FLATTENED, S.FLAT)]
    spot, perp, unknown = d.exposure()
    assert abs(spot) < d.core.plan.spot.dust
    assert perp == 0
    assert not unknown


@pytest.mark.parametrize("reason", REJECTS)
@pytest.mark.parametrize(
    ("rejected", "unwind_role", "unwind_amount"),
    [(PE0, LegRole.SPOT, "0.00199"), (SE0, LegRole.PERP, "0.002")],
)
def test_reject_after_the_other_leg_filled_unwinds_at_once(
    rejected: str, unwind_role: LegRole, unwind_amount: str, reason: RejectReason
) -> None:
    d = Driver()
    other = OTHER[rejected]
    d(Dispatch(), ev(other, OrderStatus.OPEN), ev(other, OrderStatus.CLOSED, Q))

    u = unwind(unwind_role, 0, unwind_amount)
    assert d(ev(rejected, OrderStatus.REJECTED, reason=reason)) == [*KILL, *send(u)]
    assert d.exposure()[2] is True  # the unwind order is in flight

    assert d(ev(u.client_order_id, OrderStatus.CLOSED, u.amount)) == [(S.UNWINDING, T.FLATTENED, S.FLAT)]
    spot, perp, _ = d.exposure()
    assert spot == (D("0.000008") if unwind_role is LegRole.SPOT else 0)  # fee-eaten residual, below dust
    assert perp == 0


# --- partial fills and the fill deadline -----------------------------------------------------------------


def test_fill_deadline_with_no_fills_cancels_both_and_voids() -> None:
    d = acked()

    assert d(FillDeadline()) == [CancelOrder(SE0, "BTC/USDT"), CancelOrder(PE0, "BTC/USDT:USDT")]
    assert d(ev(SE0, OrderStatus.CANCELED)) == []
    assert d(ev(PE0, OrderStatus.CANCELED)) == [(S.DISPATCHED, T.VOID, S.FLAT)]
    assert d.exposure() == (0, 0, False)


def test_fill_deadline_with_one_partial_fill_unwinds_the_filled_part() -> None:
    d = acked()
    d(ev(SE0, OrderStatus.OPEN, HALF))

    assert d(FillDeadline()) == [CancelOrder(SE0, "BTC/USDT"), CancelOrder(PE0, "BTC/USDT:USDT")]
    assert d(ev(SE0, OrderStatus.CANCELED, HALF)) == KILL  # the perp cancel is already on its way
    assert d(ev(PE0, OrderStatus.CANCELED)) == send(unwind(LegRole.SPOT, 0, "0.00099"))
    assert d.exposure() == (HALF - spot_fee(HALF), 0, True)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (OrphanPolicy.FLATTEN, "flatten"),
        (OrphanPolicy.TRIM, "trim"),
    ],
)
def test_equal_partial_fills_at_the_deadline_follow_the_orphan_policy(policy: OrphanPolicy, expected: str) -> None:
    d = Driver(policy)
    d(Dispatch(), ev(SE0, OrderStatus.OPEN, HALF), ev(PE0, OrderStatus.OPEN, HALF))
    d(FillDeadline())

    # The first leg to end with fills while the other may still fill is leg risk: kill switch.
    assert d(ev(SE0, OrderStatus.CANCELED, HALF)) == KILL
    cmds = d(ev(PE0, OrderStatus.CANCELED, HALF))

    if expected == "trim":
        assert cmds == [(S.UNWINDING, T.TRIMMED, S.HEDGED)]
        assert d.exposure() == (HALF - spot_fee(HALF), -HALF, False)
    else:
        assert cmds == send(unwind(LegRole.SPOT, 0, "0.00099"), unwind(LegRole.PERP, 0, "0.001"))


def test_partial_fill_on_both_legs_then_full_fills_hedge() -> None:
    d = acked()

    assert d(ev(SE0, OrderStatus.OPEN, HALF), ev(PE0, OrderStatus.OPEN, HALF)) == []
    assert d(ev(PE0, OrderStatus.CLOSED, Q)) == []
    assert d(ev(SE0, OrderStatus.CLOSED, Q)) == [(S.DISPATCHED, T.HEDGE, S.HEDGED)]


# --- unknown outcomes ------------------------------------------------------------------------------------


def test_unknown_ack_breaks_the_leg_and_queries_it() -> None:
    d = Driver()
    d(Dispatch())

    assert d(ev(SE0, OrderStatus.UNKNOWN)) == [*KILL, QueryOrder(SE0, "BTC/USDT")]
    assert d.exposure() == (0, 0, True)
    assert d(ev(PE0, OrderStatus.OPEN)) == [CancelOrder(PE0, "BTC/USDT:USDT")]
    # The query finds the order resting at the venue: cancel it too.
    assert d(ev(SE0, OrderStatus.OPEN)) == [CancelOrder(SE0, "BTC/USDT")]
    assert d(ev(SE0, OrderStatus.CANCELED), ev(PE0, OrderStatus.CANCELED)) == [(S.UNWINDING, T.FLATTENED, S.FLAT)]


def test_unknown_ack_for_an_order_the_venue_never_took() -> None:
    d = Driver()
    d(Dispatch(), ev(PE0, OrderStatus.OPEN), ev(SE0, OrderStatus.UNKNOWN))

    # engine/_actor.py: fetch_order answers not found -> rejected/other.
    assert d(ev(SE0, OrderStatus.REJECTED, reason=RejectReason.OTHER)) == []  # perp cancel still travelling
    assert d(ev(PE0, OrderStatus.CANCELED, HALF)) == send(unwind(LegRole.PERP, 0, "0.001"))


def test_unknown_ack_that_turns_out_filled_is_unwound() -> None:
    d = Driver()
    d(Dispatch(), ev(PE0, OrderStatus.OPEN), ev(SE0, OrderStatus.UNKNOWN), ev(PE0, OrderStatus.CANCELED))

    assert d(ev(SE0, OrderStatus.CLOSED, Q)) == send(unwind(LegRole.SPOT, 0, "0.00199"))


# --- shutdown and fault in every state --------------------------------------------------------------------


def test_shutdown_in_pending_aborts() -> None:
    d = Driver()
    assert d(Shutdown()) == [(S.PENDING, T.ABORT, S.FLAT)]


def test_shutdown_in_dispatched_cancels_entries_only() -> None:
    d = acked()
    d(ev(SE0, OrderStatus.OPEN, HALF))

    assert d(Shutdown()) == [CancelOrder(SE0, "BTC/USDT"), CancelOrder(PE0, "BTC/USDT:USDT")]
    assert d.state is S.DISPATCHED


def test_shutdown_keeps_a_hedge() -> None:
    d = hedged()
    assert d(Shutdown()) == []
    assert d.state is S.HEDGED


def test_shutdown_never_stops_the_kill_switch() -> None:
    d = hedged()
    d(CloseRequested("operator"))

    assert d(Shutdown()) == []  # both unwind orders are in flight; their killed sends report unknown
    assert d.state is S.UNWINDING
    assert d(ev(SU0, OrderStatus.UNKNOWN), ev(PU0, OrderStatus.UNKNOWN)) == [
        QueryOrder(SU0, "BTC/USDT"),
        QueryOrder(PU0, "BTC/USDT:USDT"),
    ]


def test_shutdown_and_fault_in_flat_do_nothing() -> None:
    d = Driver()
    d(Abort())
    assert d(Shutdown(), Fault("late")) == []
    assert d.state is S.FLAT


def test_fault_in_pending_aborts() -> None:
    d = Driver()
    assert d(Fault("boom")) == [(S.PENDING, T.ABORT, S.FLAT)]


def test_fault_in_dispatched_makes_in_flight_sends_unknown() -> None:
    d = Driver()
    d(Dispatch())

    cmds = d(Fault("boom"))

    assert cmds == [
        (S.DISPATCHED, T.FAULT, S.ORPHANED),
        (S.ORPHANED, T.UNWIND, S.UNWINDING),
        QueryOrder(SE0, "BTC/USDT"),
        QueryOrder(PE0, "BTC/USDT:USDT"),
    ]
    assert d.exposure() == (0, 0, True)


@pytest.mark.parametrize("policy", [OrphanPolicy.FLATTEN, OrphanPolicy.TRIM])
def test_fault_in_hedged_closes_everything(policy: OrphanPolicy) -> None:
    d = hedged(policy)

    cmds = d(Fault("boom"))

    assert cmds == [
        (S.HEDGED, T.FAULT, S.ORPHANED),
        (S.ORPHANED, T.UNWIND, S.UNWINDING),
        *send(unwind(LegRole.SPOT, 0, "0.00199"), unwind(LegRole.PERP, 0, "0.002")),
    ]


def test_fault_in_unwinding_restarts_the_kill_switch() -> None:
    d = hedged()
    d(CloseRequested())

    cmds = d(Fault("boom"))

    # The unwind sends died with the actor: unknown, so asked about, never resent blindly.
    assert cmds == [
        (S.UNWINDING, T.FAULT, S.ORPHANED),
        (S.ORPHANED, T.UNWIND, S.UNWINDING),
        QueryOrder(SU0, "BTC/USDT"),
        QueryOrder(PU0, "BTC/USDT:USDT"),
    ]
    assert d(ev(SU0, OrderStatus.CLOSED, "0.00199")) == []
    assert d(ev(PU0, OrderStatus.REJECTED, reason=RejectReason.OTHER)) == send(unwind(LegRole.PERP, 1, "0.002"))


# --- venue reductions (liquidation / ADL) ----------------------------------------------------------------


def test_liquidation_while_hedged_flattens_under_flatten_policy() -> None:
    d = hedged(OrphanPolicy.FLATTEN)

    cmds = d(VenueReduction(HALF))

    assert cmds == [
        (S.HEDGED, T.LEG_BROKEN, S.ORPHANED),
        (S.ORPHANED, T.UNWIND, S.UNWINDING),
        *send(unwind(LegRole.SPOT, 0, "0.00199"), unwind(LegRole.PERP, 0, "0.001")),
    ]
    assert d.exposure()[:2] == (Q - spot_fee(Q), -HALF)


def test_liquidation_while_hedged_trims_under_trim_policy() -> None:
    d = hedged(OrphanPolicy.TRIM)

    # Held terms: 0.001998 held against 0.001 short sells the excess of what is HELD, on the spot grid, so
    # the spot that stays (0.001008) is level with the short to the spot step (not a fee's worth below it).
    assert d(VenueReduction(HALF)) == [
        (S.HEDGED, T.LEG_BROKEN, S.ORPHANED),
        (S.ORPHANED, T.UNWIND, S.UNWINDING),
        *send(unwind(LegRole.SPOT, 0, "0.00099")),
    ]
    assert d(ev(SU0, OrderStatus.CLOSED, "0.00099")) == [(S.UNWINDING, T.TRIMMED, S.HEDGED)]
    assert d.exposure() == (Q - spot_fee(Q) - D("0.00099"), -HALF, False)
    assert d.core.unmatched() == 0


def test_full_liquidation_under_trim_policy_flattens() -> None:
    d = hedged(OrphanPolicy.TRIM)

    assert d(VenueReduction(Q))[2:] == send(unwind(LegRole.SPOT, 0, "0.00199"))
    assert d(ev(SU0, OrderStatus.CLOSED, "0.00199")) == [(S.UNWINDING, T.FLATTENED, S.FLAT)]


def test_liquidation_of_a_trimmed_hedge_closes_the_naked_spot() -> None:
    """Regression (model checker): after a trim, `matched` ignored the unwinds already done, so a later
    liquidation of the remaining perp went straight back to `hedged` holding a naked spot long."""
    d = Driver(OrphanPolicy.TRIM)
    d(Dispatch(), ev(SE0, OrderStatus.OPEN), ev(PE0, OrderStatus.OPEN), ev(PE0, OrderStatus.CLOSED, Q))
    d(ev(SE0, OrderStatus.OPEN, HALF))
    assert d(ev(SE0, OrderStatus.EXPIRED, HALF)) == [*KILL, *send(unwind(LegRole.PERP, 0, "0.001"))]
    assert d(ev(PU0, OrderStatus.CLOSED, HALF)) == [(S.UNWINDING, T.TRIMMED, S.HEDGED)]

    cmds = d(VenueReduction(HALF))

    assert cmds == [
        (S.HEDGED, T.LEG_BROKEN, S.ORPHANED),
        (S.ORPHANED, T.UNWIND, S.UNWINDING),
        *send(unwind(LegRole.SPOT, 0, "0.00099")),
    ]
    assert d(ev(SU0, OrderStatus.CLOSED, "0.00099")) == [(S.UNWINDING, T.FLATTENED, S.FLAT)]
    assert d.exposure() == (D("0.000009"), 0, False)


# --- close request ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [OrphanPolicy.FLATTEN, OrphanPolicy.TRIM])
def test_close_request_flattens_a_hedge(policy: OrphanPolicy) -> None:
    d = hedged(policy)

    assert d(CloseRequested("operator")) == [
        (S.HEDGED, T.UNWIND, S.UNWINDING),
        *send(unwind(LegRole.SPOT, 0, "0.00199"), unwind(LegRole.PERP, 0, "0.002")),
    ]
    assert d(ev(SU0, OrderStatus.CLOSED, "0.00199")) == []
    assert d(ev(PU0, OrderStatus.CLOSED, Q)) == [(S.UNWINDING, T.FLATTENED, S.FLAT)]
    assert d.exposure() == (D("0.000008"), 0, False)


def test_close_request_outside_hedged_is_ignored() -> None:
    d = acked()
    assert d(CloseRequested()) == []
    assert d.state is S.DISPATCHED


def test_rejected_unwind_is_retried_with_the_next_attempt() -> None:
    d = hedged()
    d(CloseRequested())

    assert d(ev(PU0, OrderStatus.REJECTED, reason=RejectReason.OTHER)) == []  # spot unwind still in flight
    assert d(ev(SU0, OrderStatus.EXPIRED, "0.00099")) == send(
        unwind(LegRole.SPOT, 1, "0.00100"), unwind(LegRole.PERP, 1, "0.002")
    )


# --- late fills and out-of-order reports -----------------------------------------------------------------


def test_fill_racing_a_cancel_is_unwound() -> None:
    d = Driver()
    d(Dispatch(), ev(PE0, OrderStatus.OPEN))
    assert d(ev(SE0, OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS)) == [CancelOrder(PE0, "BTC/USDT:USDT")]

    # The perp fills while the cancel travels; the cancel then fails and the engine fetches the order.
    assert d(ev(PE0, OrderStatus.CLOSED, Q)) == [*KILL, *send(unwind(LegRole.PERP, 0, "0.002"))]
    assert d(ev(PE0, OrderStatus.CLOSED, Q)) == []


def test_late_fill_after_a_terminal_report_counts() -> None:
    d = acked()
    d(ev(SE0, OrderStatus.CLOSED, Q), FillDeadline())
    assert d(ev(PE0, OrderStatus.CANCELED)) == [*KILL, *send(unwind(LegRole.SPOT, 0, "0.00199"))]

    # A fill that happened before the cancel is reported after it: the later terminal word carries more.
    assert d(ev(PE0, OrderStatus.CANCELED, HALF)) == []
    assert d.core.orders[PE0].filled == HALF
    assert d(ev(SU0, OrderStatus.CLOSED, "0.00199")) == send(unwind(LegRole.PERP, 0, "0.001"))


def test_out_of_order_cumulative_updates_never_move_backwards() -> None:
    d = acked()
    d(ev(SE0, OrderStatus.OPEN, HALF))

    assert d(ev(SE0, OrderStatus.OPEN)) == []  # the late REST ack
    assert d.core.orders[SE0].filled == HALF
    d(ev(SE0, OrderStatus.CLOSED, Q))
    assert d(ev(SE0, OrderStatus.OPEN, HALF)) == []  # a stale stream update after the fill
    assert d.core.orders[SE0].status is OrderStatus.CLOSED
    assert d.core.orders[SE0].filled == Q


def test_stale_open_after_terminal_is_ignored() -> None:
    d = acked()
    d(ev(SE0, OrderStatus.CANCELED))

    assert d(ev(SE0, OrderStatus.OPEN)) == []
    assert d.core.orders[SE0].status is OrderStatus.CANCELED


def test_report_for_an_unknown_client_order_id_names_it() -> None:
    d = acked()
    with pytest.raises(KeyError, match="no order 'lg-x-SE0'"):
        d(OrderEvent("lg-x-SE0", OrderStatus.OPEN))


# --- dust and spot fees charged in base ------------------------------------------------------------------


def test_unwind_sells_what_is_held_not_what_filled() -> None:
    d = acked()
    d(ev(SE0, OrderStatus.CLOSED, Q))

    cmds = d(ev(PE0, OrderStatus.REJECTED, reason=RejectReason.INSUFFICIENT_FUNDS))

    # 0.002 filled, 0.000002 BTC paid as fee: 0.001998 held, 0.00199 on the spot grid.
    assert cmds == [*KILL, *send(unwind(LegRole.SPOT, 0, "0.00199"))]


def test_residual_below_dust_is_left_and_the_package_is_flat() -> None:
    d = Driver(spot_dust="0.005")  # e.g. a min-notional larger than what is held
    d(Dispatch(), ev(SE0, OrderStatus.OPEN))
    assert d(ev(SE0, OrderStatus.CANCELED, HALF)) == KILL  # perp send still unanswered: wait for it

    cmds = d(ev(PE0, OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS))

    assert cmds == [(S.UNWINDING, T.FLATTENED, S.FLAT)]
    assert d.exposure() == (HALF - spot_fee(HALF), 0, False)


# --- regressions found by the model checker (fsm/_check.py) ----------------------------------------------


def rejected_spot_with_perp_cancel_in_flight(d: Driver) -> None:
    d(Dispatch(), ev(PE0, OrderStatus.OPEN))
    assert d(ev(SE0, OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS)) == [CancelOrder(PE0, "BTC/USDT:USDT")]


def test_cancel_timeout_on_a_partially_filled_order_is_not_dropped() -> None:
    """The `unknown` from a cancel timeout carries no fills; it was dropped as 'moving backwards', leaving
    the order 'open' with its cancel 'sent' forever while the venue may have cancelled it."""
    d = Driver()
    rejected_spot_with_perp_cancel_in_flight(d)
    assert d(ev(PE0, OrderStatus.OPEN, HALF)) == KILL

    assert d(OrderEvent(PE0, OrderStatus.UNKNOWN)) == [QueryOrder(PE0, "BTC/USDT:USDT")]
    assert d.core.orders[PE0].filled == HALF  # fills are never forgotten
    assert d(ev(PE0, OrderStatus.OPEN, HALF)) == [CancelOrder(PE0, "BTC/USDT:USDT")]
    assert d(ev(PE0, OrderStatus.CANCELED, HALF)) == send(unwind(LegRole.PERP, 0, "0.001"))


def test_cancel_timeout_then_still_open_is_cancelled_again() -> None:
    d = Driver()
    rejected_spot_with_perp_cancel_in_flight(d)

    assert d(OrderEvent(PE0, OrderStatus.UNKNOWN)) == [*KILL, QueryOrder(PE0, "BTC/USDT:USDT")]
    assert d(ev(PE0, OrderStatus.OPEN)) == [CancelOrder(PE0, "BTC/USDT:USDT")]


@pytest.mark.parametrize("event", [Fault("boom"), Shutdown(), Recovered()], ids=["fault", "shutdown", "recovered"])
def test_requests_killed_with_the_actor_are_asked_again(event: Event) -> None:
    """A fault, an engine shutdown or a crash kills the cancel in flight; the flag that it was sent
    survived, so the resting order was never cancelled again."""
    d = Driver()
    rejected_spot_with_perp_cancel_in_flight(d)

    cmds = d(event)

    assert cmds[-1] == CancelOrder(PE0, "BTC/USDT:USDT")


def test_fault_re_queries_an_unknown_whose_query_died() -> None:
    d = Driver()
    d(Dispatch(), ev(PE0, OrderStatus.OPEN))
    assert d(ev(SE0, OrderStatus.UNKNOWN)) == [*KILL, QueryOrder(SE0, "BTC/USDT"), CancelOrder(PE0, "BTC/USDT:USDT")]

    cmds = d(Fault("boom"))

    assert cmds == [
        (S.UNWINDING, T.FAULT, S.ORPHANED),
        (S.ORPHANED, T.UNWIND, S.UNWINDING),
        QueryOrder(SE0, "BTC/USDT"),
        CancelOrder(PE0, "BTC/USDT:USDT"),
    ]


def test_recovered_leaves_sends_of_the_new_process_alone() -> None:
    """Recovery feeds the venue's answers, then `Recovered`. An unwind the answers caused is in flight in
    the new process: declaring it unknown made the core query it while it travelled, hear 'not found' and
    send a second unwind (oversold spot)."""
    d = Driver()
    d(Dispatch(), ev(SE0, OrderStatus.OPEN), ev(SE0, OrderStatus.CLOSED, Q))
    # the process crashed with the perp send unanswered; recovery asks the venue: never arrived
    assert d(ev(PE0, OrderStatus.REJECTED, reason=RejectReason.OTHER)) == [
        *KILL,
        *send(unwind(LegRole.SPOT, 0, "0.00199")),
    ]

    assert d(Recovered()) == []
    assert d.core.orders[SU0].status is OrderStatus.SUBMITTING


def test_recovery_with_an_unreachable_order_queries_it() -> None:
    d = Driver()
    d(Dispatch(), ev(SE0, OrderStatus.OPEN))

    # engine recover(): the perp cannot be fetched -> unknown, then Recovered
    assert d(OrderEvent(PE0, OrderStatus.UNKNOWN)) == [
        *KILL,
        CancelOrder(SE0, "BTC/USDT"),
        QueryOrder(PE0, "BTC/USDT:USDT"),
    ]

    # Recovered cannot tell which requests died with the old process, so it asks again: idempotent
    # duplicates (a second cancel hears "not found" and turns into a query).
    assert d(Recovered()) == [CancelOrder(SE0, "BTC/USDT"), QueryOrder(PE0, "BTC/USDT:USDT")]


# --- replay ----------------------------------------------------------------------------------------------


def test_replaying_the_events_rebuilds_the_same_core() -> None:
    d = Driver(OrphanPolicy.TRIM)
    d(Dispatch(), ev(SE0, OrderStatus.OPEN), ev(PE0, OrderStatus.UNKNOWN), ev(SE0, OrderStatus.OPEN, HALF))
    d(ev(PE0, OrderStatus.OPEN), Fault("boom"), ev(PE0, OrderStatus.CANCELED), ev(SE0, OrderStatus.CANCELED, HALF))

    fresh = d.replayed()

    assert fresh.fingerprint() == d.core.fingerprint()
    assert fresh.exposure() == d.core.exposure()


def test_clone_is_independent() -> None:
    d = acked()
    twin = d.core.clone()

    twin.handle(ev(SE0, OrderStatus.CLOSED, Q))
    twin.handle(ev(PE0, OrderStatus.CLOSED, Q))

    assert twin.state is S.HEDGED
    assert d.state is S.DISPATCHED
    assert d.core.orders[SE0].filled == 0
    assert twin.fingerprint() != d.core.fingerprint()


_STATUSES = [OrderStatus.OPEN, OrderStatus.CLOSED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED,
             OrderStatus.UNKNOWN]  # fmt: skip


def _random_event(data: st.DataObject, core: PackageCore) -> Event:
    """An event the core can be fed in any state: an answer about one of its orders, or an engine event."""
    kinds = ["deadline", "shutdown", "fault", "recovered", "reduction", "close"]
    kind = data.draw(st.sampled_from(["order", "order", "order", *kinds] if core.orders else kinds))
    if kind == "order":
        cid = data.draw(st.sampled_from(sorted(core.orders)))
        amount = core.orders[cid].intent.amount
        filled = data.draw(st.sampled_from([D(0), amount / 2, amount]))
        return ev(cid, data.draw(st.sampled_from(_STATUSES)), filled)
    return {
        "deadline": FillDeadline(), "shutdown": Shutdown(), "fault": Fault("boom"), "recovered": Recovered(),
        "reduction": VenueReduction(HALF), "close": CloseRequested("test", "operator", D("60100"), D("60050")),
    }[kind]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(data=st.data(), policy=st.sampled_from(list(OrphanPolicy)))
def test_a_clone_and_its_original_never_share_a_change(data: st.DataObject, policy: OrphanPolicy) -> None:
    """Whatever happens to a clone (the actor decides every step on one) leaves the original exactly as it
    was, and the other way round; and a clone answers the same events with the same commands."""
    core = PackageCore(make_plan(policy))
    core.handle(Dispatch())
    for _ in range(data.draw(st.integers(0, 8))):
        core.handle(_random_event(data, core))
    twin = core.clone()
    assert twin.fingerprint() == core.fingerprint()
    before = core.fingerprint()
    events = [_random_event(data, twin) for _ in range(data.draw(st.integers(1, 8)))]
    # Drawn up front from the clone's orders; the original is fed the same events afterwards.
    answers = []
    fed: list[Event] = []
    for event in events:
        if isinstance(event, OrderEvent) and event.client_order_id not in twin.orders:
            continue
        answers.append(twin.handle(event))
        fed.append(event)
        assert core.fingerprint() == before  # the original never moves with its clone
    after = twin.fingerprint()
    again = [core.handle(event) for event in fed]  # the original, fed the same events, decides the same
    assert again == answers
    assert core.fingerprint() == after
    assert twin.fingerprint() == after  # and moving the original left the clone alone


def test_fingerprint_and_clone_cover_every_field() -> None:
    """A field added to PackageCore or OrderFacts must reach fingerprint() and clone(), or the model checker
    would merge states that differ."""
    d = acked()
    d(ev(SE0, OrderStatus.OPEN, HALF))
    base = d.core.fingerprint()
    changes: dict[str, object] = {
        "status": OrderStatus.UNKNOWN, "filled": Q, "average": D("1"), "fee_base": D("1"), "fee_quote": D("1"),
        "reason": "x", "cancel_sent": True, "query_sent": True,
        "intent": unwind(LegRole.SPOT, 0, "0.001"),
    }  # fmt: skip
    assert set(changes) == {f.name for f in fields(OrderFacts)}
    for name, value in changes.items():
        twin = d.core.clone()
        setattr(twin.orders[SE0], name, value)
        assert twin.fingerprint() != base, name
        assert getattr(twin.clone().orders[SE0], name) == value, name
    core_changes: dict[str, object] = {
        "entry": {}, "unwind_attempts": {}, "venue_reduced": D("1"), "entry_closing": True, "close_all": True,
        "orders": {}, "epoch": 3, "exiting": True, "exit_passive": True,
    }  # fmt: skip
    constant = {"plan", "lifecycle", "edges", "initial"}  # fixed per package, or the state itself
    assert set(core_changes) | constant == {f.name for f in fields(PackageCore)}
    for name, value in core_changes.items():
        twin = d.core.clone()
        setattr(twin, name, value)
        assert twin.fingerprint() != base, name
        assert getattr(twin.clone(), name) == value, name


# --- exits (issue 12) ----------------------------------------------------------------------------------


def hedged_core() -> PackageCore:
    from legguard.fsm import Dispatch, model_plan

    core = PackageCore(model_plan())
    core.handle(Dispatch())
    for cid, o in list(core.orders.items()):
        amount = o.intent.amount  # the spot buy is grossed up for its fee in base: 0.00201 holds 0.00200799
        core.handle(OrderEvent(cid, OrderStatus.CLOSED, filled=amount,
                               fee_base=amount / 1000 if "-S" in cid else D(0)))  # fmt: skip
    assert core.state is State.HEDGED
    assert core.held_spot() - core.plan.quantity == D("0.00000799")  # level with the short to the spot step
    return core


def test_a_close_with_prices_sends_both_legs_as_post_only_limits_for_what_is_held() -> None:
    from legguard.fsm import CloseRequested, Purpose, SendOrder

    core = hedged_core()
    out = core.handle(CloseRequested("basis", "basis", D("60100"), D("60050")))
    sends = [c.intent for c in out if isinstance(c, SendOrder)]
    assert core.state is State.UNWINDING and core.exit_passive and core.exiting
    assert [(i.purpose, i.side.value, i.post_only, i.reduce_only, i.price) for i in sends] == [
        (Purpose.EXIT, "sell", True, False, D("60100")), (Purpose.EXIT, "buy", True, True, D("60050")),
    ]  # fmt: skip
    # 0.00201 bought (grossed up), 0.00000201 fee in BTC: 0.00200799 held, the spot grid rounds it down to
    # exactly the short (the fee no longer leaves the exit one spot step short of it)
    assert sends[0].amount == D("0.00200")
    assert sends[1].amount == D("0.002")
    assert sends[0].client_order_id.endswith("-SX0") and sends[1].client_order_id.endswith("-PX0")


def test_a_refused_exit_leg_escalates_to_aggressive_orders_and_ends_flat() -> None:
    from legguard.fsm import CancelOrder, CloseRequested, SendOrder, Transitioned, Trigger

    core = hedged_core()
    sends = [c.intent for c in core.handle(CloseRequested("x", "operator", D("60100"), D("60050")))
             if isinstance(c, SendOrder)]  # fmt: skip
    spot, perp = sends
    core.handle(OrderEvent(spot.client_order_id, OrderStatus.OPEN))
    out = core.handle(OrderEvent(perp.client_order_id, OrderStatus.REJECTED))
    assert [c.trigger for c in out if isinstance(c, Transitioned)] == [Trigger.ESCALATE]
    assert not core.exit_passive
    assert [c.client_order_id for c in out if isinstance(c, CancelOrder)] == [spot.client_order_id]
    out = core.handle(OrderEvent(spot.client_order_id, OrderStatus.CANCELED))
    market = [c.intent for c in out if isinstance(c, SendOrder)]
    assert sorted((i.role.value, i.type.value, i.amount) for i in market) == [
        ("perp", "market", D("0.002")), ("spot", "market", D("0.00200")),
    ]  # fmt: skip
    for i in market:
        core.handle(OrderEvent(i.client_order_id, OrderStatus.CLOSED, filled=i.amount))
    assert core.state is State.FLAT


def test_the_exit_deadline_ends_the_passive_phase_and_a_late_one_is_harmless() -> None:
    from legguard.fsm import CancelOrder, CloseRequested, ExitDeadline, SendOrder

    core = hedged_core()
    sends = [c.intent for c in core.handle(CloseRequested("x", "max_hold", D("60100"), D("60050")))
             if isinstance(c, SendOrder)]  # fmt: skip
    for i in sends:
        core.handle(OrderEvent(i.client_order_id, OrderStatus.OPEN))
    core.handle(OrderEvent(sends[0].client_order_id, OrderStatus.CLOSED, filled=sends[0].amount))
    assert core.exit_naked()  # the spot side closed, the perp still rests: the leg deadline runs
    out = core.handle(ExitDeadline())
    assert [c.client_order_id for c in out if isinstance(c, CancelOrder)] == [sends[1].client_order_id]
    assert core.handle(ExitDeadline()) == []


def test_trim_rounds_what_stays_hedged_to_the_grid_both_markets_share() -> None:
    """Issue 10, defect 3: spot 0.00123 against perp 0.002 used to end "hedged" short 0.00077 with nothing
    sent (the perp excess rounded down to zero). What stays hedged is on the common 0.001 grid: the excess
    of both legs is closed, and the legs then match."""
    d = Driver(OrphanPolicy.TRIM)
    d(Dispatch(), ev(SE0, OrderStatus.OPEN), ev(PE0, OrderStatus.OPEN))
    d(ev(PE0, OrderStatus.CLOSED, Q), ev(SE0, OrderStatus.OPEN, "0.00123"))
    d(FillDeadline())
    cmds = d(ev(SE0, OrderStatus.CANCELED, "0.00123"))

    assert cmds[: len(KILL)] == KILL
    # The spot excess is what is HELD (0.00122877) beyond the 0.001 that stays: 0.00022 on the spot grid.
    assert cmds[len(KILL) :] == send(unwind(LegRole.SPOT, 0, "0.00022"), unwind(LegRole.PERP, 0, "0.001"))
    d(ev(SU0, OrderStatus.CLOSED, "0.00022"))
    assert d(ev(PU0, OrderStatus.CLOSED, "0.001")) == [(S.UNWINDING, T.TRIMMED, S.HEDGED)]
    spot, perp, unknown = d.exposure()
    assert perp == -HALF
    assert abs(spot + perp) < D("0.00001")
    assert not unknown


def test_a_spot_residual_the_venue_refuses_as_too_small_after_a_fall_is_dust() -> None:
    """Issue 10, defect 6: the spot dust is the minimum notional at the entry price. After a fall the venue
    refuses a residual above it on its filters; the kill switch must not retry it until the attempts run out
    (and stop silently in unwinding): a refused residual under twice the entry dust is today's dust."""
    d = Driver(spot_dust="0.0015")  # the minimum notional at the entry price, in base units
    d(Dispatch(), ev(SE0, OrderStatus.OPEN), ev(PE0, OrderStatus.OPEN), ev(SE0, OrderStatus.CLOSED, Q))
    d(ev(PE0, OrderStatus.CLOSED, Q))
    d(CloseRequested("operator"))
    assert d(ev(PU0, OrderStatus.CLOSED, Q)) == []
    # the price fell: 0.00199 is now below the venue's minimum notional
    cmds = d(ev(SU0, OrderStatus.REJECTED, reason=RejectReason.INVALID_ORDER))
    assert cmds == [(S.UNWINDING, T.FLATTENED, S.FLAT)]
    spot, perp, unknown = d.exposure()
    assert (perp, unknown) == (0, False)
    assert 0 < spot < 2 * D("0.0015")


def test_a_refused_spot_unwind_of_real_size_is_still_retried() -> None:
    d = Driver(spot_dust="0.0005")  # 0.00199 is four times the entry dust: not dust whatever the venue says
    d(Dispatch(), ev(SE0, OrderStatus.OPEN), ev(PE0, OrderStatus.OPEN), ev(SE0, OrderStatus.CLOSED, Q))
    d(ev(PE0, OrderStatus.CLOSED, Q))
    d(CloseRequested("operator"))
    d(ev(PU0, OrderStatus.CLOSED, Q))
    assert d(ev(SU0, OrderStatus.REJECTED, reason=RejectReason.INVALID_ORDER)) == send(
        unwind(LegRole.SPOT, 1, "0.00199")
    )


# --- the cancel armed for an answer still travelling ----------------------------------------------------


def rests(order: OrderIntent) -> ArmedCancel:
    return ArmedCancel(order.client_order_id, refused=False, order=order)


def test_a_leg_refused_before_the_others_answer_arms_the_others_cancel_for_when_it_rests() -> None:
    d = Driver()
    d(Dispatch())
    assert d.core.cancels_on_answer() == []  # nothing went wrong: a leg that rests is what is wanted
    d(ev(PE0, OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS))
    before = d.core.fingerprint()

    armed = d.core.cancels_on_answer()

    assert armed == [rests(entry(LegRole.SPOT))] and d.core.fingerprint() == before  # decided on twins
    for filled in ("0", HALF, "0.0019"):  # whatever the answer says it filled, the core cancels it
        assert CancelOrder(SE0, "BTC/USDT") in d.core.clone().handle(ev(SE0, OrderStatus.OPEN, filled))
    assert CancelOrder(SE0, "BTC/USDT") in d(ev(SE0, OrderStatus.OPEN, HALF))
    assert d.core.cancels_on_answer() == []  # answered: its cancel is the core's own now, sent once


def test_a_naked_leg_resting_arms_its_cancel_for_the_other_legs_refusal() -> None:
    d = Driver()
    d(Dispatch(), ev(SE0, OrderStatus.OPEN))
    assert d.core.cancels_on_answer() == []  # resting with nothing filled: nothing is naked
    d(ev(SE0, OrderStatus.OPEN, HALF))  # the spot filled half, the perp's answer still travels

    armed = d.core.cancels_on_answer()

    assert armed == [ArmedCancel(PE0, refused=True, order=entry(LegRole.SPOT))]
    for reason in RejectReason:  # refused for any reason, or its outcome unknown: the spot is cancelled
        assert CancelOrder(SE0, "BTC/USDT") in d.core.clone().handle(ev(PE0, OrderStatus.REJECTED, reason=reason))
    assert CancelOrder(SE0, "BTC/USDT") in d.core.clone().handle(ev(PE0, OrderStatus.UNKNOWN))
    assert CancelOrder(SE0, "BTC/USDT") not in d(ev(PE0, OrderStatus.OPEN))  # resting: nothing to cancel
    assert d.core.cancels_on_answer() == []  # both answered


def test_an_answer_still_travelling_at_the_fill_deadline_is_cancelled_when_it_rests() -> None:
    d = Driver()
    d(Dispatch(), ev(SE0, OrderStatus.OPEN), FillDeadline())  # the spot's cancel leaves, the perp has no answer

    assert d.core.cancels_on_answer() == [rests(entry(LegRole.PERP))]


def test_armed_only_for_answers_the_core_cancels() -> None:
    refused = Driver()
    refused(Dispatch(), ev(SE0, OrderStatus.REJECTED, reason=RejectReason.OTHER))
    assert refused.core.cancels_on_answer() == [rests(entry(LegRole.PERP))]
    unwinding = Driver()
    unwinding(Dispatch(), ev(SE0, OrderStatus.OPEN, HALF), ev(PE0, OrderStatus.REJECTED, reason=RejectReason.OTHER))
    unwinding(ev(SE0, OrderStatus.CANCELED, HALF))
    assert unwinding.state is S.UNWINDING and unwinding.core.orders[SU0].status is OrderStatus.SUBMITTING
    assert unwinding.core.cancels_on_answer() == []  # the kill switch's market order in flight is never cancelled
    unknown = Driver()
    unknown(Dispatch(), ev(PE0, OrderStatus.UNKNOWN))  # a query, not a refusal: the spot may still hedge it
    assert unknown.state is S.UNWINDING
    assert unknown.core.cancels_on_answer() == [rests(entry(LegRole.SPOT))]  # the kill switch cancels it anyway


# --- what the engine may arm while the kill switch's cancels are in flight ---------------------------------


def test_the_unwind_is_known_while_the_cancel_travels_and_confirming_it_sends_exactly_that() -> None:
    d = Driver()
    d(Dispatch(), ev(SE0, OrderStatus.OPEN), ev(SE0, OrderStatus.OPEN, HALF))
    assert d.core.provisional_sends() == []  # nothing is being cancelled yet
    d(ev(PE0, OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS))
    before = d.core.fingerprint()

    prepared = d.core.provisional_sends()

    assert prepared == [unwind(LegRole.SPOT, 0, "0.00099")]  # what was filled, net of the fee charged in base
    assert d.core.fingerprint() == before  # worked out on a twin: the core itself is untouched
    assert d(ev(SE0, OrderStatus.CANCELED, HALF)) == send(*prepared)


def test_a_fill_racing_the_cancel_changes_what_is_sent() -> None:
    d = Driver()
    d(Dispatch(), ev(SE0, OrderStatus.OPEN, HALF), ev(PE0, OrderStatus.REJECTED, reason=RejectReason.OTHER))
    prepared = d.core.provisional_sends()

    sent = d(ev(SE0, OrderStatus.CANCELED, D("0.0015")))  # the answer reports more than was known

    assert prepared == [unwind(LegRole.SPOT, 0, "0.00099")]
    assert sent == send(unwind(LegRole.SPOT, 0, "0.00149")) != send(*prepared)


def test_the_unwind_after_a_fill_deadline_is_known_once_both_cancels_travel() -> None:
    d = acked()
    d(ev(SE0, OrderStatus.OPEN, HALF), FillDeadline())  # both entries being cancelled, still dispatched

    prepared = d.core.provisional_sends()

    assert d.state is S.DISPATCHED and prepared == [unwind(LegRole.SPOT, 0, "0.00099")]
    d(ev(SE0, OrderStatus.CANCELED, HALF))
    assert d(ev(PE0, OrderStatus.CANCELED)) == send(*prepared)


def test_the_cancels_expected_answer_is_decided_ahead_on_a_twin_exactly_as_the_core_decides_it() -> None:
    d = Driver()
    d(Dispatch(), ev(SE0, OrderStatus.OPEN), ev(SE0, OrderStatus.OPEN, HALF))
    assert d.core.provisional_reaction() is None  # nothing is being cancelled yet
    d(ev(PE0, OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS))
    before = d.core.fingerprint()

    reaction = d.core.provisional_reaction()

    assert reaction is not None
    answer, commands, twin = reaction
    assert d.core.fingerprint() == before  # the core itself is untouched
    o = d.core.orders[SE0]
    assert answer == OrderEvent(SE0, OrderStatus.CANCELED, o.filled, o.average, o.fee_base, o.fee_quote)
    assert [c.intent for c in commands if isinstance(c, SendOrder)] == d.core.provisional_sends() != []
    assert d(answer) == shape(commands)  # the core fed that answer decides exactly that...
    assert d.core.fingerprint() == twin.fingerprint()  # ...and ends as the twin did


def test_the_expected_answer_carries_the_fees_the_caller_knows_and_else_the_cores() -> None:
    d = Driver()
    d(Dispatch(), ev(SE0, OrderStatus.OPEN, HALF), ev(PE0, OrderStatus.REJECTED, reason=RejectReason.OTHER))
    asked: list[tuple[str, str, D]] = []

    def ledger(symbol: str, cid: str, filled: D) -> tuple[D, D] | None:
        asked.append((symbol, cid, filled))
        return D("0.000002"), D("0")

    told, own = d.core.provisional_reaction(ledger), d.core.provisional_reaction(lambda *_: None)

    assert told is not None and own is not None
    o = d.core.orders[SE0]
    assert asked == [(o.intent.symbol, SE0, HALF)]
    assert (told[0].fee_base, told[0].fee_quote) == (D("0.000002"), D("0"))
    assert own[0] == OrderEvent(SE0, OrderStatus.CANCELED, HALF, o.average, o.fee_base, o.fee_quote)
    fresh = d.core.clone()
    assert fresh.handle(told[0]) == told[1] and fresh.fingerprint() == told[2].fingerprint()


def test_no_step_is_prepared_unless_one_order_is_live_with_its_cancel_in_flight() -> None:
    d = acked()
    d(ev(SE0, OrderStatus.OPEN, HALF), FillDeadline())  # both entries being cancelled: which answers first?
    assert d.core.provisional_sends() != [] and d.core.provisional_reaction() is None
    d(ev(SE0, OrderStatus.CANCELED, HALF))  # one left: its answer's step can be prepared
    reaction = d.core.provisional_reaction()
    assert reaction is not None and reaction[0].client_order_id == PE0

    unknown = Driver()
    unknown(Dispatch(), ev(PE0, OrderStatus.OPEN, HALF), ev(SE0, OrderStatus.UNKNOWN))
    assert unknown.core.provisional_reaction() is None  # the unknown leg is queried, not cancelled


def test_nothing_is_prepared_while_an_outcome_is_unknown_or_nothing_is_unmatched() -> None:
    d = Driver()
    d(Dispatch(), ev(PE0, OrderStatus.OPEN, HALF), ev(SE0, OrderStatus.UNKNOWN))
    assert d.state is S.UNWINDING
    assert d.core.provisional_sends() == []  # the unknown leg may have filled anything: query first

    calm = acked()
    calm(FillDeadline())  # both cancels travel, nothing filled: they void the package, nothing to send
    assert calm.core.provisional_sends() == []
