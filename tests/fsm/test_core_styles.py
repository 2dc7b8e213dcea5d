"""`PackageCore` under the maker-taker and taker-taker execution styles, synchronously: which orders go out
(post-only maker, capped IOC taker), that each maker fill is hedged at once and never over-hedged, and that a
taker leg that cannot fill within its cap hands the package to the kill switch instead of chasing."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

from legguard.domain import OrderStatus, OrderType, RejectReason, Side
from legguard.fsm import (
    CancelOrder,
    Command,
    Dispatch,
    ExecutionStyle,
    FillDeadline,
    LegExecution,
    LegPlan,
    LegRole,
    OrderEvent,
    PackageCore,
    PackagePlan,
    Purpose,
    SendOrder,
    State,
    Transitioned,
    Trigger,
)
from legguard.fsm._core import MAX_HEDGE_THROTTLES

Q = D("0.003")
CAP = D("60006")  # the perp taker leg sells at 60006 or better, never lower


def plan(style: ExecutionStyle, maker: LegRole = LegRole.SPOT) -> PackagePlan:
    return PackagePlan(
        package_id="t",
        client_id_prefix="lg-t",
        quantity=Q,
        spot=LegPlan("BTC/USDT", Side.BUY, D("60000"), step=D("0.00001"), dust=D("0.00001")),
        perp=LegPlan("BTC/USDT:USDT", Side.SELL, CAP, step=D("0.001"), dust=D("0.001"), min_order=D("0.001")),
        style=style,
        maker=maker,
    )


def sends(cmds: list[Command]) -> list[SendOrder]:
    return [c for c in cmds if isinstance(c, SendOrder)]


def triggers(cmds: list[Command]) -> list[Trigger]:
    return [c.trigger for c in cmds if isinstance(c, Transitioned)]


def test_maker_taker_sends_only_the_maker_leg_and_hedges_each_fill_at_once() -> None:
    core = PackageCore(plan(ExecutionStyle.MAKER_TAKER))
    (maker,) = sends(core.handle(Dispatch()))
    assert maker.intent.role is LegRole.SPOT and maker.intent.post_only and not maker.intent.ioc
    assert core.plan.execution(LegRole.PERP) is LegExecution.TAKER
    cid = maker.intent.client_order_id
    core.handle(OrderEvent(cid, OrderStatus.OPEN))
    assert sends(core.handle(OrderEvent(cid, OrderStatus.OPEN, filled=D("0.0005")))) == []  # below one perp step
    (hedge,) = sends(core.handle(OrderEvent(cid, OrderStatus.OPEN, filled=D("0.00123"))))
    assert hedge.intent.role is LegRole.PERP and hedge.intent.ioc and not hedge.intent.post_only
    assert (hedge.intent.amount, hedge.intent.price, hedge.intent.type) == (D("0.001"), CAP, OrderType.LIMIT)
    # The taker leg's exposure is bounded by the maker's fills: nothing more goes out until the maker fills more.
    assert sends(core.handle(OrderEvent(hedge.intent.client_order_id, OrderStatus.CLOSED, filled=D("0.001")))) == []
    (hedge2,) = sends(core.handle(OrderEvent(cid, OrderStatus.CLOSED, filled=Q)))
    assert hedge2.intent.amount == D("0.002") and hedge2.intent.attempt == 1
    cmds = core.handle(OrderEvent(hedge2.intent.client_order_id, OrderStatus.CLOSED, filled=D("0.002")))
    assert triggers(cmds) == [Trigger.HEDGE] and core.state is State.HEDGED
    assert core.unmatched() == 0


def test_maker_taker_with_the_perp_resting_hedges_on_spot() -> None:
    core = PackageCore(plan(ExecutionStyle.MAKER_TAKER, maker=LegRole.PERP))
    (maker,) = sends(core.handle(Dispatch()))
    assert maker.intent.role is LegRole.PERP and maker.intent.post_only
    (hedge,) = sends(core.handle(OrderEvent(maker.intent.client_order_id, OrderStatus.CLOSED, filled=Q)))
    assert hedge.intent.role is LegRole.SPOT and hedge.intent.ioc and hedge.intent.amount == Q


def test_a_hedge_that_cannot_fill_within_its_cap_goes_to_the_kill_switch_without_chasing() -> None:
    core = PackageCore(plan(ExecutionStyle.MAKER_TAKER))
    (maker,) = sends(core.handle(Dispatch()))
    cid = maker.intent.client_order_id
    (hedge,) = sends(core.handle(OrderEvent(cid, OrderStatus.OPEN, filled=D("0.002"))))
    # The book moved below the cap: the IOC fills half and expires. No second, lower-priced hedge follows.
    cmds = core.handle(OrderEvent(hedge.intent.client_order_id, OrderStatus.EXPIRED, filled=D("0.001")))
    assert triggers(cmds) == [Trigger.LEG_BROKEN, Trigger.UNWIND]
    assert core.state is State.UNWINDING
    assert [c for c in cmds if isinstance(c, CancelOrder)] == [CancelOrder(cid, "BTC/USDT")]
    assert all(s.intent.purpose is Purpose.UNWIND or s.intent.price == CAP for s in sends(cmds))
    reason = next(c.reason for c in cmds if isinstance(c, Transitioned) and c.trigger is Trigger.LEG_BROKEN)
    assert "no chasing" in reason and str(CAP) in reason


def test_maker_taker_fill_deadline_cancels_the_maker_and_hedges_what_filled() -> None:
    core = PackageCore(plan(ExecutionStyle.MAKER_TAKER))
    (maker,) = sends(core.handle(Dispatch()))
    cid = maker.intent.client_order_id
    (hedge,) = sends(core.handle(OrderEvent(cid, OrderStatus.OPEN, filled=D("0.001"))))
    core.handle(OrderEvent(hedge.intent.client_order_id, OrderStatus.CLOSED, filled=D("0.001")))
    cmds = core.handle(FillDeadline())
    assert [c for c in cmds if isinstance(c, CancelOrder)] == [CancelOrder(cid, "BTC/USDT")]
    cmds = core.handle(OrderEvent(cid, OrderStatus.CANCELED, filled=D("0.001")))
    assert triggers(cmds) == [Trigger.HEDGE]  # a smaller package, fully hedged


def test_maker_taker_unfilled_maker_voids() -> None:
    core = PackageCore(plan(ExecutionStyle.MAKER_TAKER))
    (maker,) = sends(core.handle(Dispatch()))
    cmds = core.handle(OrderEvent(maker.intent.client_order_id, OrderStatus.REJECTED))
    assert triggers(cmds) == [Trigger.VOID] and core.state is State.FLAT


def test_maker_taker_unknown_hedge_is_leg_broken() -> None:
    core = PackageCore(plan(ExecutionStyle.MAKER_TAKER))
    (maker,) = sends(core.handle(Dispatch()))
    (hedge,) = sends(core.handle(OrderEvent(maker.intent.client_order_id, OrderStatus.CLOSED, filled=Q)))
    cmds = core.handle(OrderEvent(hedge.intent.client_order_id, OrderStatus.UNKNOWN))
    assert triggers(cmds)[:2] == [Trigger.LEG_BROKEN, Trigger.UNWIND]


def test_taker_taker_sends_both_legs_as_capped_iocs() -> None:
    core = PackageCore(plan(ExecutionStyle.TAKER_TAKER))
    out = sends(core.handle(Dispatch()))
    assert [(s.intent.role, s.intent.ioc, s.intent.post_only) for s in out] == [
        (LegRole.SPOT, True, False),
        (LegRole.PERP, True, False),
    ]
    spot, perp = (s.intent.client_order_id for s in out)
    core.handle(OrderEvent(spot, OrderStatus.CLOSED, filled=Q))
    # The perp book ran past the cap: nothing filled, the IOC expired. Kill switch, no retry at a worse price.
    cmds = core.handle(OrderEvent(perp, OrderStatus.EXPIRED))
    assert triggers(cmds) == [Trigger.LEG_BROKEN, Trigger.UNWIND]
    unwinds = sends(cmds)
    assert [(s.intent.role, s.intent.purpose) for s in unwinds] == [(LegRole.SPOT, Purpose.UNWIND)]


def test_style_survives_the_journal_round_trip() -> None:
    p = plan(ExecutionStyle.MAKER_TAKER, maker=LegRole.PERP)
    assert PackagePlan.from_dict(p.to_dict()) == p
    legacy = plan(ExecutionStyle.MAKER_MAKER)
    legacy = replace(legacy, perp=replace(legacy.perp, min_order=None))
    data = legacy.to_dict()
    assert "style" not in data and "min_order" not in data["perp"]  # old readers see what they always saw
    assert PackagePlan.from_dict(data).style is ExecutionStyle.MAKER_MAKER


def test_maker_fills_are_hedged_in_batches_one_in_flight_at_a_time() -> None:
    core = PackageCore(replace(plan(ExecutionStyle.MAKER_TAKER), quantity=D("0.008")))  # batch: 0.002
    (maker,) = sends(core.handle(Dispatch()))
    cid = maker.intent.client_order_id
    assert sends(core.handle(OrderEvent(cid, OrderStatus.OPEN, filled=D("0.001")))) == []
    (first,) = sends(core.handle(OrderEvent(cid, OrderStatus.OPEN, filled=D("0.0025"))))
    assert first.intent.amount == D("0.002")
    assert sends(core.handle(OrderEvent(cid, OrderStatus.OPEN, filled=D("0.005")))) == []  # one in flight
    (second,) = sends(core.handle(OrderEvent(first.intent.client_order_id, OrderStatus.CLOSED, filled=D("0.002"))))
    assert second.intent.amount == D("0.003")  # what filled meanwhile, together
    core.handle(OrderEvent(second.intent.client_order_id, OrderStatus.CLOSED, filled=D("0.003")))
    (last,) = sends(core.handle(OrderEvent(cid, OrderStatus.CLOSED, filled=D("0.008"))))
    assert last.intent.amount == D("0.003")
    assert triggers(core.handle(OrderEvent(last.intent.client_order_id, OrderStatus.CLOSED, filled=D("0.003")))) == [
        Trigger.HEDGE
    ]


def test_a_hedge_refused_by_the_request_budget_is_sent_again_at_the_same_cap() -> None:
    core = PackageCore(plan(ExecutionStyle.MAKER_TAKER))
    (maker,) = sends(core.handle(Dispatch()))
    (hedge,) = sends(core.handle(OrderEvent(maker.intent.client_order_id, OrderStatus.CLOSED, filled=Q)))
    for attempt in range(1, MAX_HEDGE_THROTTLES + 1):
        cmds = core.handle(
            OrderEvent(hedge.intent.client_order_id, OrderStatus.REJECTED, reason=RejectReason.RATE_LIMITED)
        )
        assert core.state is State.DISPATCHED and core.throttled_hedges() == attempt
        (hedge,) = sends(cmds)
        assert (hedge.intent.amount, hedge.intent.price, hedge.intent.attempt) == (Q, CAP, attempt)
    cmds = core.handle(OrderEvent(hedge.intent.client_order_id, OrderStatus.REJECTED, reason=RejectReason.RATE_LIMITED))
    assert triggers(cmds)[:2] == [Trigger.LEG_BROKEN, Trigger.UNWIND]  # the budget keeps refusing: kill switch


def test_a_hedge_never_leaves_a_tail_below_the_taker_minimum() -> None:
    p = plan(ExecutionStyle.MAKER_TAKER)
    core = PackageCore(replace(p, quantity=D("0.010"), perp=replace(p.perp, min_order=D("0.004"))))
    (maker,) = sends(core.handle(Dispatch()))
    cid = maker.intent.client_order_id
    # 0.008 filled: hedging all of it would leave 0.002 to hedge later, below the 0.004 minimum; hedge 0.006.
    (first,) = sends(core.handle(OrderEvent(cid, OrderStatus.OPEN, filled=D("0.008"))))
    assert first.intent.amount == D("0.006")
    assert sends(core.handle(OrderEvent(first.intent.client_order_id, OrderStatus.CLOSED, filled=D("0.006")))) == []
    (last,) = sends(core.handle(OrderEvent(cid, OrderStatus.CLOSED, filled=D("0.010"))))
    assert last.intent.amount == D("0.004")
    assert triggers(core.handle(OrderEvent(last.intent.client_order_id, OrderStatus.CLOSED, filled=D("0.004")))) == [
        Trigger.HEDGE
    ]


# --- exact hedges (issue 14): held spot, grossed-up spot orders --------------------------------------

FEE = D("0.001")


def grossed(style: ExecutionStyle, maker: LegRole) -> PackagePlan:
    p = plan(style, maker)
    return replace(p, spot=replace(p.spot, amount=D("0.00301"), fee_rate=FEE))  # 0.003 / 0.999, rounded up


def test_a_spot_maker_is_grossed_up_and_its_hedges_cover_what_it_holds() -> None:
    core = PackageCore(grossed(ExecutionStyle.MAKER_TAKER, LegRole.SPOT))
    (maker,) = sends(core.handle(Dispatch()))
    assert maker.intent.amount == D("0.00301")
    cid = maker.intent.client_order_id
    # 0.001 filled holds 0.000999 (the fee not reported yet is assumed at the plan's rate): no perp step yet
    assert sends(core.handle(OrderEvent(cid, OrderStatus.OPEN, filled=D("0.001")))) == []
    (hedge,) = sends(core.handle(OrderEvent(cid, OrderStatus.CLOSED, filled=D("0.00301"), fee_base=D("0.00000301"))))
    assert hedge.intent.amount == Q  # 0.00300699 held hedges the whole 0.003 short
    cmds = core.handle(OrderEvent(hedge.intent.client_order_id, OrderStatus.CLOSED, filled=Q))
    assert triggers(cmds) == [Trigger.HEDGE]
    assert 0 <= core.held_spot() - Q < core.plan.spot.step and core.unmatched() == 0


def test_a_spot_hedge_is_grossed_up_for_its_fee() -> None:
    p = grossed(ExecutionStyle.MAKER_TAKER, LegRole.PERP)
    core = PackageCore(p)
    (maker,) = sends(core.handle(Dispatch()))
    assert maker.intent.amount == Q  # the perp rests the package quantity
    (hedge,) = sends(core.handle(OrderEvent(maker.intent.client_order_id, OrderStatus.CLOSED, filled=Q)))
    assert hedge.intent.role is LegRole.SPOT and hedge.intent.amount == D("0.00301")
    cmds = core.handle(OrderEvent(hedge.intent.client_order_id, OrderStatus.CLOSED, filled=D("0.00301"),
                                  fee_base=D("0.00000301")))  # fmt: skip
    assert triggers(cmds) == [Trigger.HEDGE] and core.held_spot() == D("0.00300699")


def test_a_fee_nobody_grossed_up_leaves_spot_short_and_the_hedge_says_so() -> None:
    """Without the gross-up a full fill holds a fee's worth less than the short: still level to the spot
    step (the old behaviour, e.g. older journals), but a whole step short is a broken leg."""
    core = PackageCore(plan(ExecutionStyle.MAKER_MAKER))
    spot, perp = (s.intent.client_order_id for s in sends(core.handle(Dispatch())))
    core.handle(OrderEvent(perp, OrderStatus.CLOSED, filled=Q))
    cmds = core.handle(OrderEvent(spot, OrderStatus.CANCELED, filled=D("0.00299"), fee_base=D("0.00000299")))
    assert triggers(cmds)[0] is Trigger.LEG_BROKEN


def test_swept_dust_counts_as_held_and_the_exit_sells_it() -> None:
    from legguard.fsm import CloseRequested

    dust = D("0.00000799")  # left behind by an earlier package
    p = grossed(ExecutionStyle.MAKER_MAKER, LegRole.SPOT)
    # (0.003 - dust) / 0.999 = 0.0029950..., rounded up: 0.003 (the sweep saved one spot step)
    core = PackageCore(replace(p, sweep=dust, spot=replace(p.spot, amount=Q)))
    assert core.plan.spot_held == D("0.002997") + dust
    spot, perp = (s.intent.client_order_id for s in sends(core.handle(Dispatch())))
    core.handle(OrderEvent(perp, OrderStatus.CLOSED, filled=Q))
    cmds = core.handle(OrderEvent(spot, OrderStatus.CLOSED, filled=Q, fee_base=D("0.000003")))
    assert triggers(cmds) == [Trigger.HEDGE]
    assert core.held_spot() == D("0.00300499") and core.exposure().spot == D("0.002997")
    exits = sends(core.handle(CloseRequested("x", "operator", D("60100"), D("60000"))))
    # the exit sells what the package holds, swept dust included: the whole short's worth
    assert sorted((s.intent.role.value, s.intent.amount) for s in exits) == [("perp", Q), ("spot", D("0.00300"))]


def test_the_plan_carries_the_gross_up_through_the_journal_and_older_plans_read_as_before() -> None:
    p = replace(grossed(ExecutionStyle.MAKER_MAKER, LegRole.SPOT), sweep=D("0.00000799"))
    data = p.to_dict()
    assert (data["spot"]["amount"], data["spot"]["fee_rate"], data["sweep"]) == ("0.00301", "0.001", "0.00000799")
    assert PackagePlan.from_dict(data) == p
    old = plan(ExecutionStyle.MAKER_MAKER)
    assert "amount" not in old.to_dict()["spot"] and "sweep" not in old.to_dict()
    assert PackagePlan.from_dict(old.to_dict()) == old and old.entry_amount(LegRole.SPOT) == Q
    # Dust swept away exactly is 0E-8 live; the journal omits a zero sweep and reads back 0. The demo found the
    # replayed core's reason ("holds 0") differing from the live one ("holds 0E-8"): one zero, always.
    swept = replace(old, sweep=D("0E-8"))
    assert str(swept.sweep) == "0" and str(PackagePlan.from_dict(swept.to_dict()).sweep) == "0"
    assert str(replace(old.spot, fee_rate=D("0E-6")).fee_rate) == "0"


def test_a_fee_rate_above_the_venues_still_hedges_but_a_missing_fill_does_not() -> None:
    """The emulator through ccxt: the plan grossed a 0.01 BTC short up at ccxt's 0.1 % (0.01002) while the
    venue kept 0.075 %: the buy holds 0.01001248, more than a spot step over the short. What the plan's rate
    overestimated is allowed on top of the step; a spot leg a whole step short is not."""
    p = plan(ExecutionStyle.MAKER_MAKER)
    p = replace(p, quantity=D("0.01"), spot=replace(p.spot, amount=D("0.01002"), fee_rate=D("0.001")))
    core = PackageCore(p)
    spot, perp = (s.intent.client_order_id for s in sends(core.handle(Dispatch())))
    core.handle(OrderEvent(perp, OrderStatus.CLOSED, filled=D("0.01")))
    cmds = core.handle(OrderEvent(spot, OrderStatus.CLOSED, filled=D("0.01002"), fee_base=D("0.00000752")))
    assert core.held_spot() - D("0.01") == D("0.00001248") > p.spot.step
    assert triggers(cmds) == [Trigger.HEDGE]
    short = PackageCore(p)
    spot, perp = (s.intent.client_order_id for s in sends(short.handle(Dispatch())))
    short.handle(OrderEvent(perp, OrderStatus.CLOSED, filled=D("0.01")))
    cmds = short.handle(OrderEvent(spot, OrderStatus.CANCELED, filled=D("0.00999"), fee_base=D("0.00000749")))
    assert triggers(cmds)[0] is Trigger.LEG_BROKEN
