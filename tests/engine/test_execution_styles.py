"""Each execution style on the simulated venue in virtual time: its hedge path, and its kill-switch path under
every fault kind on either leg, ending hedged or flat with the venue's books agreeing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from hedges import assert_exact_hedge
from leg_faults import LEG_FAULTS
from test_engine import DEADLINES, ETH, ETH_PERP, Rig, assert_journal_verifies
from trio.testing import MockClock

from legguard.adapters.sim._venue import SimConfig, open_sim_venue
from legguard.domain import OrderType
from legguard.engine import Engine, EngineConfig, PackageSpec
from legguard.engine._spec import BreakerConfig
from legguard.engine.journal._store import Journal
from legguard.fsm import ExecutionStyle, LegRole, Purpose, State

ANY_SPREAD = Decimal(-1)
STYLES = [
    (ExecutionStyle.MAKER_TAKER, LegRole.SPOT),
    (ExecutionStyle.MAKER_TAKER, LegRole.PERP),
    (ExecutionStyle.TAKER_TAKER, LegRole.SPOT),
]


def spec(style: ExecutionStyle, maker: LegRole, slippage: str = "0.0005") -> PackageSpec:
    return PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=ANY_SPREAD, execution=style, maker_leg=maker,
                       max_slippage=Decimal(slippage))  # fmt: skip


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = tmp_path / "journal.db"
    journal = Journal.open(db)
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES, breaker=BreakerConfig(max_orphans=50)))
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)  # let the books fill
            yield Rig(venue, journal, engine, db)
    journal.close()


@pytest.mark.parametrize(("style", "maker"), STYLES)
async def test_each_style_hedges_with_its_legs_in_their_roles(
    autojump_clock: MockClock, rig: Rig, style: ExecutionStyle, maker: LegRole
) -> None:
    pids = [rig.engine.submit(spec(style, maker)) for _ in range(3)]
    states = [await rig.settle(pid) for pid in pids]
    assert State.HEDGED in states
    rig.assert_safe()
    for pid in pids:
        core = rig.handle(pid).core
        entries = [o.intent for o in core.orders.values() if o.intent.purpose is Purpose.ENTRY]
        for intent in entries:
            taker = style is ExecutionStyle.TAKER_TAKER or intent.role is not maker
            assert (intent.ioc, intent.post_only, intent.type) == (taker, not taker, OrderType.LIMIT)
            assert intent.price == core.plan.leg(intent.role).price  # a taker leg never goes past its cap
        if style is ExecutionStyle.MAKER_TAKER:
            # In held terms: a spot hedge is grossed up for its fee in base, so what it holds covers the short.
            taker_role = LegRole.PERP if maker is LegRole.SPOT else LegRole.SPOT
            taker_leg = core.plan.leg(taker_role)
            hedged = sum((taker_leg.held_of(i.amount) for i in entries if i.role is taker_role), Decimal(0))
            maker_held = sum((o.filled - o.fee_base for o in core.leg_orders(maker)
                              if o.intent.purpose is Purpose.ENTRY), Decimal(0))  # fmt: skip
            # the taker leg's exposure is bounded by the maker's fills, to the spot lot step
            assert hedged < maker_held + core.plan.spot.step
        if core.state is State.HEDGED:
            assert_exact_hedge(core)
    assert_journal_verifies(rig.db)


@pytest.mark.parametrize(("style", "maker"), STYLES)
@pytest.mark.parametrize("leg", [ETH, ETH_PERP])
@pytest.mark.parametrize(("fault", "params"), LEG_FAULTS)
async def test_fault_on_either_leg_ends_hedged_or_flat_in_every_style(
    autojump_clock: MockClock,
    rig: Rig,
    style: ExecutionStyle,
    maker: LegRole,
    leg: str,
    fault: str,
    params: dict[str, float],
) -> None:
    rig.venue.inject(fault, symbol=leg, **params)
    pid = rig.engine.submit(spec(style, maker))
    start = trio.current_time()
    state = await rig.settle(pid)
    assert state in (State.HEDGED, State.FLAT)
    if rig.handle(pid).ever_orphaned:
        assert trio.current_time() - start <= DEADLINES.fill + DEADLINES.ack + DEADLINES.unwind
    rig.assert_safe()
    assert_journal_verifies(rig.db)


async def test_a_taker_cap_with_no_room_refuses_to_chase_and_the_kill_switch_flattens(
    autojump_clock: MockClock, rig: Rig
) -> None:
    """The perp jumps down after pricing: the spot maker fills, the perp hedge's cap is above the whole bid
    side, the IOC expires unfilled, and the kill switch sells the spot back; no perp order below the cap."""
    pid = rig.engine.submit(spec(ExecutionStyle.MAKER_TAKER, LegRole.SPOT, slippage="0"))
    core = rig.engine.handles[pid].core
    rig.venue.inject("price_jump", symbol=ETH_PERP, pct=-1.5)  # spot and perp fall: the spot bid is crossed
    state = await rig.settle(pid)
    perp_orders = [o for o in core.leg_orders(LegRole.PERP) if o.intent.purpose is Purpose.ENTRY]
    if perp_orders:  # the maker filled and a hedge went out at its cap
        assert all(o.intent.price == core.plan.perp.price for o in perp_orders)
    assert state in (State.HEDGED, State.FLAT)
    rig.assert_safe()


async def test_a_hedge_filled_while_positions_are_fetched_is_not_charged_as_a_reduction(
    autojump_clock: MockClock, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The position reconciler asks the venue for its perp positions; a package's IOC hedge fills while that
    request is in flight, so the answer lacks a short the package (rightly) believes it holds. Charging it as
    a venue reduction would unwind the spot and leave the perp short behind, owned by nobody."""
    real = rig.venue.fetch_positions
    late: list[str] = []

    async def fetch_positions_then_a_hedge_fills() -> dict[str, Decimal]:
        snapshot = dict(await real())
        late.append(rig.engine.submit(spec(ExecutionStyle.MAKER_TAKER, LegRole.SPOT)))
        await rig.settle(late[0])  # hedged before the answer arrives
        return snapshot

    monkeypatch.setattr(rig.venue, "fetch_positions", fetch_positions_then_a_hedge_fills)
    await rig.engine.reconcile_short(ETH_PERP)
    await trio.sleep(2.0)  # whatever the reconciler charged reaches the package
    handle = rig.handle(late[0])
    assert handle.core.state is State.HEDGED and handle.core.venue_reduced == 0
    assert not handle.ever_orphaned
    rig.assert_safe()
