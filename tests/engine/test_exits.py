"""Exits on the simulated venue, in virtual time: closing a hedged package keeps the entry's guarantees (both
closing legs together, passive first, escalation into the kill switch on any trouble, flat at the venue), the
exit policies fire and are journaled, and the inventory / balance limits and the margin guard refuse and
close with their reasons journaled."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from kept import keep_handles
from leg_faults import LEG_FAULTS
from trio.testing import MockClock

from legguard.adapters.market import GeneratorConfig
from legguard.adapters.sim._venue import SimConfig, SimVenue, open_sim_venue
from legguard.domain import MarginAccount, RateLimited, VenueError
from legguard.engine import Deadlines, Engine, EngineConfig, ExitConfig, PackageSpec, RiskConfig
from legguard.engine._handle import PackageHandle
from legguard.engine._spec import BreakerConfig, SpecError
from legguard.engine.journal._replay import verify
from legguard.engine.journal._store import Journal
from legguard.fsm import Purpose, State

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
DEADLINES = Deadlines(ack=1.0, fill=4.0, unwind=5.0, leg=1.0)
ANY_SPREAD = Decimal(-1)
NO_POLICY = ExitConfig(enabled=False, deadline=2.0)


@dataclass
class Rig:
    venue: SimVenue
    journal: Journal
    engine: Engine
    db: Path
    kept: dict[str, PackageHandle] = field(init=False)  # every handle, released or not

    def __post_init__(self) -> None:
        self.kept = keep_handles(self.engine)

    def handle(self, package_id: str) -> PackageHandle:
        return self.engine.handles.get(package_id) or self.kept[package_id]

    def spec(self, quantity: str = "0.05") -> PackageSpec:
        return PackageSpec(ETH, ETH_PERP, Decimal(quantity), min_spread=ANY_SPREAD)

    async def hedged(self, quantity: str = "0.05") -> str:
        for _ in range(5):
            pid = self.engine.submit(self.spec(quantity))
            if await self.settle(pid) is State.HEDGED:
                return pid
        raise AssertionError("no package hedged in five tries")

    async def settle(self, package_id: str, limit: float = 30.0) -> State:
        handle = self.handle(package_id)
        with trio.fail_after(limit):
            await handle.wait_until(
                lambda core: core.state is State.FLAT or (core.state is State.HEDGED and core.is_quiescent())
            )
        return handle.core.state

    async def flat(self, package_id: str, limit: float = 30.0) -> None:
        with trio.fail_after(limit):
            await self.handle(package_id).wait_until(lambda core: core.state is State.FLAT)

    def assert_safe(self) -> None:
        held = Decimal(0)
        for h in {**self.kept, **self.engine.handles}.values():
            core = h.core
            assert core.state in (State.HEDGED, State.FLAT), (h.package_id, core.state)
            exp = core.exposure()
            assert not exp.unknown
            if core.state is State.FLAT:
                assert abs(exp.spot) < core.plan.spot.dust, (h.package_id, exp)
                assert exp.perp == 0, (h.package_id, exp)
            held += exp.perp
        assert self.venue.engine.positions().get(ETH_PERP, Decimal(0)) == held
        assert not [o for o in self.venue.engine.open_orders() if o.client_order_id.startswith("lg")]

    def exits(self, package_id: str) -> list[dict[str, object]]:
        return [r.payload for r in self.journal.timeline(package_id) if r.kind == "exit"]

    def triggers(self, package_id: str) -> list[str]:
        return [r.payload["trigger"] for r in self.journal.timeline(package_id) if r.kind == "transition"]


def config(**changes: object) -> EngineConfig:
    base = EngineConfig(
        deadlines=DEADLINES,
        breaker=BreakerConfig(max_orphans=50),
        exit=NO_POLICY,
        risk=RiskConfig(check_balances=False, margin_guard=False),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@asynccontextmanager
async def open_rig(tmp_path: Path, cfg: EngineConfig, seed: int = 11, **sim: object) -> AsyncIterator[Rig]:
    db = tmp_path / f"journal-{seed}-{id(cfg)}.db"
    journal = Journal.open(db)
    async with open_sim_venue(SimConfig(seed=seed, **sim)) as venue:  # type: ignore[arg-type]
        engine = Engine(venue, journal, cfg)
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)  # let the books fill
            yield Rig(venue, journal, engine, db)
    journal.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with open_rig(tmp_path, config()) as r:
        yield r


def assert_verifies(db: Path) -> None:
    report = verify(db)
    assert report.ok, report.problems


# --- the close itself ----------------------------------------------------------------------------------


async def test_operator_close_sends_both_legs_passive_and_ends_flat(autojump_clock: MockClock, rig: Rig) -> None:
    pid = await rig.hedged()
    assert rig.engine.request_close(pid, "test wants out")
    assert not rig.engine.request_close(pid)  # already closing
    await rig.flat(pid)
    core = rig.handle(pid).core
    exits = [o for o in core.orders.values() if o.intent.purpose is Purpose.EXIT]
    assert {o.intent.role.value for o in exits} == {"spot", "perp"}
    assert all(o.intent.post_only and o.intent.price is not None for o in exits)
    perp_exit = next(o for o in exits if o.intent.role.value == "perp")
    assert perp_exit.intent.reduce_only
    spot_exit = next(o for o in exits if o.intent.role.value == "spot")
    # never sells more than is held: the spot buy's fee was charged in ETH
    assert (
        spot_exit.intent.amount
        <= core.orders[core.entry[spot_exit.intent.role]].filled
        - core.orders[core.entry[spot_exit.intent.role]].fee_base
    )
    assert rig.exits(pid)[0]["policy"] == "operator"
    assert rig.exits(pid)[0]["passive"] is True
    assert rig.triggers(pid)[-1] == "flattened"
    rig.assert_safe()
    assert_verifies(rig.db)


async def test_close_without_fresh_books_goes_straight_to_aggressive(autojump_clock: MockClock, rig: Rig) -> None:
    pid = await rig.hedged()
    rig.engine.books.pop(ETH)
    assert rig.engine.request_close(pid, policy="operator")
    await rig.flat(pid)
    core = rig.handle(pid).core
    assert not [o for o in core.orders.values() if o.intent.purpose is Purpose.EXIT]
    assert [o for o in core.orders.values() if o.intent.purpose is Purpose.UNWIND]
    rig.assert_safe()


async def test_unknown_package_is_refused_by_name(autojump_clock: MockClock, rig: Rig) -> None:
    with pytest.raises(KeyError, match="P999999"):
        rig.engine.request_close("P999999")


@pytest.mark.parametrize("leg", [ETH, ETH_PERP])
@pytest.mark.parametrize(("fault", "params"), LEG_FAULTS)
async def test_exit_under_a_fault_on_either_leg_ends_flat(
    autojump_clock: MockClock, rig: Rig, leg: str, fault: str, params: dict[str, float]
) -> None:
    pid = await rig.hedged()
    handle = rig.handle(pid)
    handle.max_naked = 0.0
    rig.venue.inject(fault, symbol=leg, **params)
    start = trio.current_time()
    assert rig.engine.request_close(pid, f"fault {fault}")
    await rig.flat(pid)
    cfg = rig.engine.config
    # passive phase, then at most the leg deadline naked, then the kill switch's round trips
    assert trio.current_time() - start <= cfg.exit.deadline + DEADLINES.ack * 2 + DEADLINES.unwind
    assert handle.max_naked <= DEADLINES.leg + DEADLINES.ack * 2 + 0.5, handle.max_naked
    assert rig.venue.faults_injected[fault] >= 1
    exits = [o for o in handle.core.orders.values() if o.intent.purpose is Purpose.EXIT]
    if fault in ("reject", "postonly_cross"):
        assert "escalate" in rig.triggers(pid)  # the passive phase ended on the failed leg
    elif fault == "ack_timeout" and not all(o.filled == o.intent.amount for o in exits):
        # an unanswered leg may still fill at the venue (the market trades through it before the ack
        # deadline); if it did not, the passive phase ended on it
        assert "escalate" in rig.triggers(pid)
    rig.assert_safe()
    assert_verifies(rig.db)


async def test_liquidation_during_the_passive_exit_escalates(autojump_clock: MockClock, rig: Rig) -> None:
    pid = await rig.hedged()
    assert rig.engine.request_close(pid)
    rig.venue.inject("liquidation", symbol=ETH_PERP, quantity=Decimal("0.02"))
    await rig.flat(pid)
    rig.assert_safe()
    assert_verifies(rig.db)


async def test_actor_crash_during_the_exit_still_ends_flat(autojump_clock: MockClock, rig: Rig) -> None:
    pid = await rig.hedged()
    handle = rig.handle(pid)
    handle.crash_on_event = len(handle.events) + 1  # raise right after the close request is handled
    assert rig.engine.request_close(pid)
    await rig.flat(pid)
    assert handle.faults == 1
    rig.assert_safe()
    assert_verifies(rig.db)


async def test_passive_exit_that_does_not_fill_escalates_at_its_deadline(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    # A frozen market (no prints reach our resting orders): only the exit deadline ends the passive phase.
    frozen = GeneratorConfig(trade_rate=0)
    async with open_rig(tmp_path, config(exit=replace(NO_POLICY, deadline=1.5)), generator=frozen) as r:
        pid = await r.hedged()
        r.venue.inject("price_jump", symbol=ETH, pct=-0.3)  # the spot moves away from our ask
        start = trio.current_time()
        assert r.engine.request_close(pid)
        await r.flat(pid)
        assert trio.current_time() - start <= 1.5 + DEADLINES.ack * 2 + DEADLINES.unwind
        events = [x.payload.get("kind") for x in r.journal.timeline(pid) if x.kind == "event"]
        assert "exit_deadline" in events
        assert "escalate" in r.triggers(pid)
        r.assert_safe()


async def test_shutdown_during_the_exit_finishes_it(autojump_clock: MockClock, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    journal = Journal.open(db)
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        engine = Engine(venue, journal, config())
        with trio.CancelScope() as scope:
            async with engine.running([ETH, ETH_PERP]):
                await trio.sleep(1.0)
                rig = Rig(venue, journal, engine, db)
                pid = await rig.hedged()
                assert engine.request_close(pid)
                await trio.sleep(0.01)
                assert rig.handle(pid).core.state is State.UNWINDING
                scope.cancel()  # Ctrl-C: the engine's scope is cancelled mid-exit
                await trio.sleep(1)
        assert rig.handle(pid).core.state is State.FLAT
        rig.assert_safe()
    journal.close()
    assert_verifies(db)


# --- exit policies ---------------------------------------------------------------------------------------


async def test_max_hold_closes_and_is_journaled(autojump_clock: MockClock, tmp_path: Path) -> None:
    cfg = config(exit=ExitConfig(enabled=True, basis_below=None, max_hold=5.0, deadline=2.0))
    async with open_rig(tmp_path, cfg) as r:
        pid = await r.hedged()
        hedged_at = r.handle(pid).hedged_at
        assert hedged_at is not None
        await r.flat(pid)
        assert r.exits(pid)[0]["policy"] == "max_hold"
        closed = next(x.mono_time for x in r.journal.timeline(pid) if x.kind == "exit")
        assert closed - hedged_at >= 5.0
        r.assert_safe()


async def test_basis_converged_closes(autojump_clock: MockClock, tmp_path: Path) -> None:
    cfg = config(exit=ExitConfig(enabled=True, basis_below=Decimal(1), deadline=2.0))  # any premium is below 1
    async with open_rig(tmp_path, cfg) as r:
        pid = await r.hedged()
        await r.flat(pid)
        assert r.exits(pid)[0]["policy"] == "basis"
        assert "premium" in str(r.exits(pid)[0]["reason"])


async def test_loss_limit_closes(autojump_clock: MockClock, tmp_path: Path) -> None:
    cfg = config(exit=ExitConfig(enabled=True, basis_below=None, loss_limit=Decimal("0.0001"), deadline=2.0))
    async with open_rig(tmp_path, cfg) as r:
        pid = await r.hedged()  # crossing both spreads to get out costs more than 0.0001 USDT
        await r.flat(pid)
        assert r.exits(pid)[0]["policy"] == "loss_limit"


# --- limits before every entry ----------------------------------------------------------------------------


def refusal(r: Rig, pid: str) -> str:
    rows = [x.payload for x in r.journal.timeline(pid) if x.kind == "transition"]
    assert rows[0]["trigger"] == "abort", rows
    return str(rows[0]["reason"])


async def test_pair_package_and_notional_caps_refuse_with_the_reason(autojump_clock: MockClock, tmp_path: Path) -> None:
    cfg = config(risk=RiskConfig(check_balances=False, margin_guard=False, max_pair_packages=1))
    async with open_rig(tmp_path, cfg) as r:
        await r.hedged()
        pid = r.engine.submit(r.spec())
        await r.flat(pid)
        assert "max_pair_packages" in refusal(r, pid)
        assert not r.handle(pid).core.orders
    cfg = config(risk=RiskConfig(check_balances=False, margin_guard=False, max_total_notional=Decimal(150)))
    async with open_rig(tmp_path, cfg, seed=12) as r:
        await r.hedged()  # ~100 USDT of ETH
        pid = r.engine.submit(r.spec())
        await r.flat(pid)
        assert "max_total_notional" in refusal(r, pid)


async def test_balance_check_refuses_a_short_the_margin_cannot_carry(autojump_clock: MockClock, tmp_path: Path) -> None:
    cfg = config(risk=RiskConfig(check_balances=True, margin_guard=False, leverage=1))
    async with open_rig(tmp_path, cfg, perp_wallet=Decimal(60)) as r:
        pid = r.engine.submit(r.spec())  # ~100 USDT short at 1x needs ~110 USDT
        await r.flat(pid)
        assert "perp margin available" in refusal(r, pid)
        assert not r.handle(pid).core.orders


async def test_balance_check_refuses_without_spot_quote(autojump_clock: MockClock, tmp_path: Path) -> None:
    cfg = config(risk=RiskConfig(check_balances=True, margin_guard=False))
    async with open_rig(tmp_path, cfg, balances={"USDT": Decimal(10), "ETH": Decimal(0), "BTC": Decimal(0)}) as r:
        pid = r.engine.submit(r.spec())
        await r.flat(pid)
        assert "spot USDT free" in refusal(r, pid)


# --- the margin guard ---------------------------------------------------------------------------------------


def strain(r: Rig, pids: list[str]) -> None:
    real = r.venue.engine.margin_account

    def strained(maint_rate: Decimal = Decimal("0.004")) -> MarginAccount:
        account = real(maint_rate)
        open_packages = sum(1 for p in pids if r.handle(p).core.state is not State.FLAT)
        maint = account.margin_balance * Decimal("0.2") * open_packages  # headroom 0.4 with 3, 0.6 with 2
        return replace(account, maint_margin=maint)

    r.venue.engine.margin_account = strained  # type: ignore[method-assign]


async def until(predicate: Callable[[], bool], limit: float = 60.0) -> None:
    """Poll in virtual time: the guard reads the venue on its own timer, there is no event to wait on."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.1)


async def test_margin_guard_stops_entries_and_closes_oldest_first_until_restored(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    cfg = config(risk=RiskConfig(check_balances=False, margin_guard=True, margin_warn=Decimal("0.6"),
                                 margin_act=Decimal("0.5"), margin_interval=0.5))  # fmt: skip
    async with open_rig(tmp_path, cfg) as r:
        pids = [await r.hedged() for _ in range(3)]
        # The venue reports the account near liquidation: each open package takes 20 % of the headroom.
        strain(r, pids)
        await until(lambda: r.engine.margin_guard.level == "act")
        refused = r.engine.submit(r.spec())
        await r.flat(refused)
        assert "margin guard" in refusal(r, refused)
        await r.flat(pids[0])
        await until(lambda: r.engine.margin_guard.level != "act")
        await trio.sleep(2)
        assert r.exits(pids[0])[0]["policy"] == "margin_guard"
        assert r.handle(pids[1]).core.state is State.HEDGED  # restored after one close
        assert r.handle(pids[2]).core.state is State.HEDGED
        levels = [x.payload["level"] for x in r.journal.rows() if x.kind == "margin"]
        assert levels[:2] == ["act", "ok"] or levels[:2] == ["act", "warn"]
        r.assert_safe()


async def test_margin_guard_waits_out_a_budget_refusal_within_its_interval(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    cfg = config(risk=RiskConfig(check_balances=False, margin_guard=True, margin_interval=5.0))
    async with open_rig(tmp_path, cfg) as r:
        real, asked = r.venue.fetch_margin, []

        async def budgeted() -> MarginAccount:
            asked.append(trio.current_time())
            if len(asked) == 1:
                raise RateLimited("margin: local request budget exhausted", retry_after=0.5)
            return await real()

        r.venue.fetch_margin = budgeted  # type: ignore[method-assign]
        r.engine.margin_guard.last = None
        await r.engine.margin_guard.check()
        assert r.engine.margin_guard.last is not None  # read after the wait, not given up until the next interval
        assert [round(t - asked[0], 3) for t in asked] == [0.0, 0.5]


async def test_a_blind_margin_guard_is_journaled_once_per_streak_and_shown_until_it_reads_again(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    cfg = config(risk=RiskConfig(check_balances=False, margin_guard=True, margin_interval=5.0))
    async with open_rig(tmp_path, cfg) as r:
        guard, real, down = r.engine.margin_guard, r.venue.fetch_margin, [True]

        async def flaky() -> MarginAccount:
            if down[0]:
                raise VenueError("margin: venue unavailable (503)")
            return await real()

        await until(lambda: guard.last is not None)  # the guard's own timer read the account once
        r.venue.fetch_margin = flaky  # type: ignore[method-assign]
        await until(lambda: guard.failures == 3)  # three reads, 5 s apart, all failed
        status = guard.status(trio.current_time())
        assert (status["failures"], status["last_error"]) == (3, "margin: venue unavailable (503)")
        # Blind since the first failed read, two intervals ago (and the last headroom read is kept).
        assert status["blind_s"] == pytest.approx(10.0, abs=0.2) and status["headroom"] is not None
        down[0] = False
        await until(lambda: guard.failures == 0)
        assert guard.status(trio.current_time())["blind_s"] is None
        rows = [x.payload for x in r.journal.rows() if x.kind == "margin_read"]
        assert [p["event"] for p in rows] == ["blind", "seeing"]  # one row per streak, not per failed read
        assert rows[0]["error"] == "margin: venue unavailable (503)" and rows[0]["level"] == "ok"
        assert rows[1]["failures"] == 3 and rows[1]["blind_s"] == pytest.approx(15.0, abs=0.2)


async def test_a_long_blind_streak_logs_its_failures_sparsely_and_every_change_of_error(
    autojump_clock: MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(risk=RiskConfig(check_balances=False, margin_guard=True, margin_interval=5.0))
    async with open_rig(tmp_path, cfg) as r:
        guard, errors = r.engine.margin_guard, ["margin: venue unavailable (503)"]

        async def down() -> MarginAccount:
            raise VenueError(errors[0])

        await until(lambda: guard.last is not None)
        r.venue.fetch_margin = down  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="legguard.engine"):
            await until(lambda: guard.failures == 10)
            errors[0] = "margin: invalid api key (401)"
            await until(lambda: guard.failures == 11)
    logged = [rec.getMessage() for rec in caplog.records if "reading the perp account failed" in rec.getMessage()]
    # The 1st, 2nd, 4th and 8th of ten identical failures, then the 11th: its error is new.
    assert [int(m.split("(")[1].split()[0]) for m in logged] == [1, 2, 4, 8, 11]
    assert logged[-1].endswith("margin: invalid api key (401)")
    assert guard.status(trio.current_time())["last_error"] == "margin: invalid api key (401)"


# --- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: ExitConfig(deadline=0), "exit.deadline"),
        (lambda: ExitConfig(loss_limit=Decimal(-1)), "exit.loss_limit"),
        (lambda: ExitConfig(max_hold=-5), "exit.max_hold"),
        (lambda: RiskConfig(margin_act=Decimal("0.6"), margin_warn=Decimal("0.5")), "risk.margin_act"),
        (lambda: RiskConfig(margin_warn=Decimal(2)), "risk.margin_warn"),
        (lambda: RiskConfig(leverage=0), "risk.leverage"),
        (lambda: RiskConfig(max_pair_packages=0), "risk.max_pair_packages"),
        (lambda: RiskConfig(max_total_notional=Decimal(0)), "risk.max_total_notional"),
    ],
)
def test_bad_exit_and_risk_values_name_the_field(build: object, field: str) -> None:
    with pytest.raises(SpecError) as info:
        build()  # type: ignore[operator]
    assert info.value.field == field


# --- collateral between wallets -------------------------------------------------------------------------------

COLLATERAL = RiskConfig(check_balances=False, margin_guard=True, margin_interval=0.5, collateral=True,
                        collateral_target=Decimal("0.5"), collateral_band=Decimal("0.1"))  # fmt: skip


def collateral_rows(r: Rig) -> list[dict[str, object]]:
    return [x.payload for x in r.journal.rows() if x.kind == "collateral"]


async def test_collateral_tops_up_the_perp_wallet_from_spot(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_rig(tmp_path, config(risk=COLLATERAL), perp_wallet=Decimal(30)) as r:
        await r.hedged()  # ~100 USDT short at 5x: ~20 of the 30 USDT wallet is initial margin
        await until(lambda: bool(collateral_rows(r)))
        row = collateral_rows(r)[0]
        assert (row["event"], row["from"], row["to"], row["asset"]) == ("moved", "spot", "perp", "USDT")
        # the wallet grew by the move (less the entry's maker fee, charged to the wallet)
        assert abs(r.venue.engine.perp_wallet() - 30 - Decimal(str(row["amount"]))) < Decimal("0.1")
        account = r.venue.engine.margin_account()
        assert account.available / account.margin_balance >= Decimal("0.49")
        await trio.sleep(5)
        assert len(collateral_rows(r)) == 1  # back inside the band: nothing more to move


async def test_collateral_is_bounded_per_hour(autojump_clock: MockClock, tmp_path: Path) -> None:
    risk = replace(COLLATERAL, collateral_max_per_hour=Decimal(6), collateral_min=Decimal(5))
    async with open_rig(tmp_path, config(risk=risk), perp_wallet=Decimal(30)) as r:
        await r.hedged()
        await until(lambda: bool(collateral_rows(r)))
        await trio.sleep(60)
        moved = [Decimal(str(x["amount"])) for x in collateral_rows(r) if x["event"] == "moved"]
        assert sum(moved) <= 6
        assert moved == [Decimal(6)]  # the first move took the hour's budget; nothing more within the hour


async def test_collateral_moves_back_to_spot_below_its_reserve(autojump_clock: MockClock, tmp_path: Path) -> None:
    risk = replace(COLLATERAL, spot_reserve=Decimal(500))
    balances = {"USDT": Decimal(100), "ETH": Decimal(0), "BTC": Decimal(0)}
    async with open_rig(tmp_path, config(risk=risk), perp_wallet=Decimal(2000), balances=balances) as r:
        await until(lambda: bool(collateral_rows(r)))
        row = collateral_rows(r)[0]
        assert (row["from"], row["to"], row["amount"]) == ("perp", "spot", "400.00")
        assert r.venue.engine.balances()["USDT"].free == 500


async def test_a_refused_transfer_is_journaled_and_nothing_moves(autojump_clock: MockClock, tmp_path: Path) -> None:
    from legguard.domain import VenueError

    async with open_rig(tmp_path, config(risk=COLLATERAL), perp_wallet=Decimal(30)) as r:

        async def refuse(asset: str, amount: Decimal, *, to_perp: bool) -> None:
            raise VenueError("Asset transfer failed: insufficient balance")

        r.venue.transfer = refuse  # type: ignore[method-assign]
        await r.hedged()
        await until(lambda: bool(collateral_rows(r)))
        row = collateral_rows(r)[0]
        assert row["event"] == "failed" and "insufficient balance" in str(row["error"])
        assert r.venue.engine.perp_wallet() < 30  # only the entry's fee left it


async def test_ctrl_c_mid_exit_with_the_venue_unreachable_is_finished_by_recovery(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """Ctrl-C while the exit rests and the venue stops answering: the shielded drain gives up at its deadline
    with the package still unwinding (journaled); the next start recovers it to flat."""
    from legguard.engine._recovery import settle_recovered

    db = tmp_path / "j.db"
    journal = Journal.open(db)
    frozen = GeneratorConfig(trade_rate=0)  # no prints: the exit's limits rest until the venue goes away
    async with open_sim_venue(SimConfig(seed=11, generator=frozen)) as venue:
        engine = Engine(venue, journal, config())
        real = {name: getattr(venue, name) for name in ("cancel_order", "fetch_order", "fire")}
        with trio.CancelScope() as scope:
            async with engine.running([ETH, ETH_PERP]):
                await trio.sleep(1.0)
                rig = Rig(venue, journal, engine, db)
                pid = await rig.hedged()
                venue.inject("price_jump", symbol=ETH, pct=-0.3)  # the spot exit rests, away from the touch
                assert engine.request_close(pid)
                await trio.sleep(0.2)
                assert rig.handle(pid).core.state is State.UNWINDING

                async def unreachable(*args: object, **kwargs: object) -> object:
                    await trio.sleep_forever()
                    raise AssertionError  # pragma: no cover

                for name in real:
                    setattr(venue, name, unreachable)
                scope.cancel()  # Ctrl-C
        assert rig.handle(pid).core.state is State.UNWINDING  # the drain's deadline passed first
        for name, method in real.items():
            setattr(venue, name, method)
        while True:  # a new process opens a new user-data stream: nothing old is delivered again
            with trio.move_on_after(0.5) as quiet:
                await venue.watch_orders()
            if quiet.cancelled_caught:
                break
        fresh = Engine(venue, journal, config())
        async with fresh.running([ETH, ETH_PERP]):
            report = await fresh.recover()
            await settle_recovered(fresh, report)
        assert report.at_restart == {pid: "unwinding"}
        assert report.final == {pid: "flat"}
        assert venue.engine.positions().get(ETH_PERP, Decimal(0)) == 0
        assert not [o for o in venue.engine.open_orders() if o.client_order_id.startswith("lg")]
    journal.close()
    assert_verifies(db)
