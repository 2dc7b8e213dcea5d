"""`legguard demo`: the whole engine against the embedded simulated market, with faults injected.

The premium trigger proposes packages; the fault plan gives some of them a fault (venue-side via
`SimVenue.inject`, or an actor crash); at the end the report checks, from the venue's own books, that every
package is hedged or flat, that nothing is left exposed, and (the venue-truth oracle) that every order,
balance and position at the venue is what the journal says.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

from legguard.adapters.sim._venue import SimConfig, SimVenue, open_sim_venue
from legguard.domain import MarketKind
from legguard.engine._engine import Engine, EngineMode
from legguard.engine._pricing import dust_threshold, round_down
from legguard.engine._spec import BreakerConfig, Deadlines, EngineConfig, ExitConfig, RiskConfig, SpecError
from legguard.engine._venue_truth import compare_venue
from legguard.engine.journal import Journal, package_pnl
from legguard.engine.journal._binding import SIM_IDENTITY, check_binding, record_binding
from legguard.fsm import ExecutionStyle, LegRole, State

from ._strategy import FaultPlan, Pair, PremiumTrigger

DEMO_PAIRS = (
    Pair("ETH/USDT", "ETH/USDT:USDT", Decimal("0.05")),
    Pair("BTC/USDT", "BTC/USDT:USDT", Decimal("0.01")),
)


DEMO_PERP_WALLET = Decimal(2000)  # USDT in the simulated USDⓈ-M wallet
OPERATOR_CLOSE_EVERY = 8.0  # the demo's operator closes the oldest hedged package this often (seconds)


@dataclass(slots=True)
class DemoOptions:
    seconds: float = 30.0
    seed: int = 7
    faults: str = "light"
    db: Path = Path("legguard.db")
    threshold: Decimal = Decimal("0.0005")
    resume_after: float = 3.0  # the demo plays the operator: resume a halted engine after this cool-off
    execution: ExecutionStyle = ExecutionStyle.MAKER_MAKER
    maker_leg: LegRole = LegRole.SPOT

    @property
    def pairs(self) -> tuple[Pair, ...]:
        return tuple(replace(p, execution=self.execution, maker_leg=self.maker_leg) for p in DEMO_PAIRS)


@dataclass(slots=True)
class DemoRun:
    """Live view of a running demo (the CLI renders it)."""

    options: DemoOptions
    engine: Engine | None = None
    venue: SimVenue | None = None
    started: float = 0.0
    faults_planned: Counter[str] = field(default_factory=Counter)
    stop: trio.Event = field(default_factory=trio.Event)


def validate_options(options: DemoOptions) -> FaultPlan:
    """Refuse bad options (SpecError naming the option) before anything is opened; the fault plan."""
    plan = FaultPlan.parse(options.faults, options.seed)
    if not options.seconds > 0 or options.seconds == float("inf"):
        raise SpecError("--seconds", options.seconds, "must be a finite number of seconds > 0")
    return plan


async def run_demo(options: DemoOptions, on_tick: Callable[[DemoRun], None] | None = None) -> dict[str, Any]:
    plan = validate_options(options)
    run = DemoRun(options)
    config = EngineConfig(
        deadlines=Deadlines(ack=1.0, fill=3.0, unwind=5.0, leg=1.0, recv_window=2.0, clock_allowance=0.5),
        breaker=BreakerConfig(max_orphans=8, window=10.0),
        # Short horizons so that every exit policy shows within a 30 s demo (the simulated premium wanders
        # between ~0.12 % and ~0.37 %: "converged" here is its low end).
        exit=ExitConfig(
            basis_below=Decimal("0.0016"), min_hold=2.0, max_hold=12.0, loss_limit=Decimal("0.6"), deadline=2.0
        ),
        # A small perp wallet (DEMO_PERP_WALLET) and tight margin levels, so that the margin guard acts on the
        # venue's own figures once the book of hedges grows: it stops entries and closes the oldest packages.
        risk=RiskConfig(
            margin_warn=Decimal("0.998"), margin_act=Decimal("0.996"), margin_interval=0.5, max_pair_packages=15
        ),
    )
    journal = Journal.open(options.db)
    try:
        previous = check_binding(journal, SIM_IDENTITY)  # a journal of another venue is never the demo's
        async with open_sim_venue(SimConfig(seed=options.seed, perp_wallet=DEMO_PERP_WALLET)) as venue:
            record_binding(journal, SIM_IDENTITY, previous, trio.current_time())
            run.venue = venue
            engine = Engine(venue, journal, config)
            run.engine = engine
            run.started = trio.current_time()
            symbols = [s for p in options.pairs for s in (p.spot_symbol, p.perp_symbol)]
            async with engine.running(symbols), trio.open_nursery() as nursery:
                nursery.start_soon(_trade, run, plan)
                nursery.start_soon(_operator, run)
                if on_tick is not None:
                    nursery.start_soon(_ticker, run, on_tick)
                with trio.move_on_after(options.seconds):
                    await run.stop.wait()
                nursery.cancel_scope.cancel()
            # engine.running() has shut down: entries cancelled, unwinds done, hedges kept.
            await trio.lowlevel.checkpoint()
            report = build_report(run, journal)
            if on_tick is not None:
                on_tick(run)
            return report
    finally:
        journal.close()


async def _trade(run: DemoRun, plan: FaultPlan) -> None:
    engine, venue = run.engine, run.venue
    assert engine is not None and venue is not None
    trigger = PremiumTrigger(run.options.pairs, threshold=run.options.threshold)
    rng = random.Random(run.options.seed + 1)
    async with trio.open_nursery() as nursery:
        while True:
            await trio.sleep(0.05)
            if engine.mode is not EngineMode.RUNNING:
                continue
            for spec in trigger.propose(engine.books, trio.current_time()):
                fault = plan.pick()
                crash_at = None
                if fault is not None:
                    run.faults_planned[fault] += 1
                    leg = rng.choice((spec.spot_symbol, spec.perp_symbol))
                    if fault == "actor_crash":
                        crash_at = rng.randint(1, 3)
                    elif fault == "liquidation":
                        pass  # injected once the package is hedged, below
                    elif fault == "price_jump":
                        venue.inject("price_jump", symbol=spec.perp_symbol, pct=rng.choice((-0.6, 0.6)))
                    elif fault == "partial_fill":
                        venue.inject("partial_fill", symbol=leg, fraction=0.4)
                    elif fault == "stream_lag":
                        venue.inject("stream_lag", seconds=0.3, duration=3.0)
                    else:
                        venue.inject(fault, symbol=leg)
                package_id = engine.submit(spec, crash_on_event=crash_at)
                if fault == "liquidation":
                    nursery.start_soon(_liquidate_when_hedged, run, package_id)


async def _liquidate_when_hedged(run: DemoRun, package_id: str) -> None:
    engine, venue = run.engine, run.venue
    assert engine is not None and venue is not None
    handle = engine.handles[package_id]
    with trio.move_on_after(10):
        await handle.wait_until(lambda core: core.state in (State.HEDGED, State.FLAT))
        if handle.core.state is not State.HEDGED:
            return
        await trio.sleep(0.2)
        venue.inject("liquidation", symbol=handle.core.plan.perp.symbol, quantity=handle.core.plan.quantity / 2)


async def _operator(run: DemoRun) -> None:
    """The demo's stand-in for the human on call: resumes a halted engine after a cool-off, and now and then
    closes the oldest hedged package by hand (`Engine.request_close`, as the control channel would)."""
    engine = run.engine
    assert engine is not None
    next_close = trio.current_time() + OPERATOR_CLOSE_EVERY
    while True:
        await trio.sleep(0.1)
        if trio.current_time() >= next_close:
            next_close += OPERATOR_CLOSE_EVERY
            for h in sorted(engine.handles.values(), key=lambda h: h.created_at):
                if h.core.state is State.HEDGED and engine.request_close(h.package_id, "demo operator"):
                    break
        if engine.mode is EngineMode.HALTED:
            await trio.sleep(run.options.resume_after)
            engine.resume(f"demo operator, after {run.options.resume_after:g}s cool-off")


async def _ticker(run: DemoRun, on_tick: Callable[[DemoRun], None]) -> None:
    while True:
        on_tick(run)
        await trio.sleep(0.25)


def build_report(run: DemoRun, journal: Journal) -> dict[str, Any]:
    engine, venue = run.engine, run.venue
    assert engine is not None and venue is not None
    open_exposure: dict[str, Decimal] = {}
    dust: dict[str, Decimal] = {}
    hedged_perp: dict[str, Decimal] = {}
    for h in engine.handles.values():
        core = h.core
        exp = core.exposure()
        if core.state is State.HEDGED:
            hedged_perp[core.plan.perp.symbol] = hedged_perp.get(core.plan.perp.symbol, Decimal(0)) + exp.perp
            if core.plan.sweep:  # dust a hedged package took over is its own now, not the desk's
                dust[core.plan.spot.symbol] = dust.get(core.plan.spot.symbol, Decimal(0)) - core.plan.sweep
            continue
        for role, amount in ((LegRole.SPOT, exp.spot), (LegRole.PERP, exp.perp)):
            leg = core.plan.leg(role)
            tradable = round_down(abs(amount), leg.step)
            book = engine.books.get(leg.symbol)
            # What the venue would trade today (minimum notional at the current price, not the entry's).
            today = leg.dust
            if role is LegRole.SPOT and book is not None and book.best_bid:
                today = max(leg.dust, dust_threshold(engine.markets[leg.symbol], book.best_bid))
            bucket = open_exposure if tradable >= today and tradable > 0 else dust
            bucket[leg.symbol] = bucket.get(leg.symbol, Decimal(0)) + amount
    # The venue's own view: the perp position per symbol must equal the hedged packages' perp legs.
    positions = venue.engine.positions()
    venue_mismatch = {
        symbol: str(
            positions.get(symbol, Decimal(0)) - hedged_perp.get(symbol, Decimal(0)) - dust.get(symbol, Decimal(0))
        )
        for symbol, m in venue.engine.markets.items()
        if m.kind is MarketKind.LINEAR
        and positions.get(symbol, Decimal(0)) - hedged_perp.get(symbol, Decimal(0)) - dust.get(symbol, Decimal(0)) != 0
    }
    # The venue-truth oracle: every order, balance and position at the venue against the journal.
    truth = compare_venue(venue.engine, journal)
    stats = engine.stats
    return {
        "packages_total": len(engine.handles),
        "final_states": dict(sorted(engine.final_states().items())),
        "orphaned_total": sum(1 for h in engine.handles.values() if h.ever_orphaned),
        "unwound_total": stats.unwound,
        "closed_total": stats.closed,
        "exits_by_policy": dict(sorted(stats.exits.items())),
        "max_naked_ms": round(stats.max_naked * 1000, 3),
        "open_exposure": {k: str(v) for k, v in sorted(open_exposure.items()) if v != 0},
        "dust": {k: str(v) for k, v in sorted(dust.items()) if v != 0},
        "venue_position_mismatch": venue_mismatch,
        "venue_truth": truth.to_dict(),
        "venue_mismatches_found_live": stats.venue_mismatches,
        "faults_injected": dict(sorted(_faults_injected(run).items())),
        "halts": stats.halts,
        "actor_faults": stats.faults,
        "stream_drops": stats.stream_drops,
        "unwind_overdue": stats.unwind_overdue,
        "execution": run.options.execution.value,
        "pnl": _pnl_summary(engine),
        "seconds": run.options.seconds,
        "seed": run.options.seed,
        "db": str(run.options.db),
    }


def _pnl_summary(engine: Engine) -> dict[str, str]:
    """Quote totals over every package (`legguard audit pnl` breaks them down from the journal)."""
    pnls = [package_pnl(h.core, h.funding) for h in engine.handles.values()]
    return {
        "realized": str(sum((p.realized for p in pnls if p.realized is not None), Decimal(0))),
        "fees": str(sum((p.fees_quote for p in pnls), Decimal(0))),
        "funding": str(sum((p.funding for p in pnls), Decimal(0))),
    }


def _faults_injected(run: DemoRun) -> Counter[str]:
    assert run.venue is not None and run.engine is not None
    counts: Counter[str] = Counter(run.venue.faults_injected)
    if run.engine.stats.faults:
        counts["actor_crash"] = run.engine.stats.faults
    return counts
