"""`legguard demo`: the whole engine against the embedded simulated market, with faults injected.

The premium trigger proposes packages; the fault plan gives some of them a fault (venue-side via
`SimVenue.inject`, or an actor crash); the simulated venue pays funding every `funding_interval` seconds and
the engine books it to the packages holding the short. At the end the report checks, from the venue's own
books, that every package is hedged or flat, that nothing is left exposed, and (the venue-truth oracle) that
every order, balance and position at the venue is what the journal says; its P&L summary adds the packages'
accounting up and sets it against the change of the venue account's value (docs/accounting.md).
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
from legguard.domain import MarketKind, Side
from legguard.engine._engine import Engine, EngineMode
from legguard.engine._pricing import dust_threshold, round_down
from legguard.engine._spec import BreakerConfig, Deadlines, EngineConfig, ExitConfig, RiskConfig, SpecError
from legguard.engine._venue_truth import compare_venue
from legguard.engine.journal import FUNDING, Journal, PackagePnl, package_pnl, unattributed_funding
from legguard.engine.journal._binding import SIM_IDENTITY, check_binding, record_binding
from legguard.engine.journal._pnl import desk_dust, funding_amount
from legguard.fsm import ExecutionStyle, LegRole, PackageCore, State

from ._carry import FundingParams, FundingStrategy
from ._strategy import FaultPlan, Pair, PremiumTrigger, Strategy, StrategyDriver

DEMO_PAIRS = (
    Pair("ETH/USDT", "ETH/USDT:USDT", Decimal("0.05")),
    Pair("BTC/USDT", "BTC/USDT:USDT", Decimal("0.01")),
)


DEMO_PERP_WALLET = Decimal(2000)  # USDT in the simulated USDⓈ-M wallet
OPERATOR_CLOSE_EVERY = 8.0  # the demo's operator closes the oldest hedged package this often (seconds)
DEMO_FUNDING_INTERVAL = 5.0  # the simulated venue pays funding this often (Binance: every 8 hours)
QUOTE = "USDT"
ROUNDING_PER_ORDER = Decimal("0.00000001")  # the venue books each perp fill's realized P&L to 8 decimals


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
    strategy: Strategy | None = None  # None: the premium trigger at `threshold` on the demo pairs
    funding_interval: float | None = DEMO_FUNDING_INTERVAL  # seconds between funding times (None: no funding)

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
    account_start: tuple[Decimal, dict[str, Decimal]] | None = None  # the venue account before trading


DEMO_STRATEGIES = ("premium", "funding")


def demo_strategy(kind: str, options: DemoOptions) -> Strategy | None:
    """The demo's strategy by name: `premium` (the default trigger) or `funding` (the funding-rate signal with
    horizons scaled to the demo's funding interval: carry over three funding times, held at least 2 s)."""
    if kind == "premium":
        return None
    if kind != "funding":
        raise SpecError("--strategy", kind, f"allowed: {', '.join(DEMO_STRATEGIES)}")
    interval = options.funding_interval
    if interval is None:
        raise SpecError("--strategy", kind, "the funding signal needs funding: --funding-interval must be > 0")
    params = FundingParams(horizon=3 * interval, funding_interval=interval, funding_poll=min(1.0, interval / 5),
                           max_funding_age=max(5.0, interval), min_hold=2.0)  # fmt: skip
    return FundingStrategy(options.pairs, params)


def validate_options(options: DemoOptions) -> FaultPlan:
    """Refuse bad options (SpecError naming the option) before anything is opened; the fault plan."""
    plan = FaultPlan.parse(options.faults, options.seed)
    if not options.seconds > 0 or options.seconds == float("inf"):
        raise SpecError("--seconds", options.seconds, "must be a finite number of seconds > 0")
    interval = options.funding_interval
    if interval is not None and not (0 < interval < float("inf")):
        raise SpecError("--funding-interval", interval, "must be a finite number of seconds > 0 (0 on the CLI: off)")
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
        # Poll the venue's funding payments often against the demo's short interval, so that a payment is
        # split across the packages that held the short when it was paid, not a while later.
        funding_interval=None if options.funding_interval is None else min(1.0, options.funding_interval / 4),
    )
    journal = Journal.open(options.db)
    try:
        previous = check_binding(journal, SIM_IDENTITY)  # a journal of another venue is never the demo's
        sim = SimConfig(seed=options.seed, perp_wallet=DEMO_PERP_WALLET, funding_interval=options.funding_interval)
        async with open_sim_venue(sim) as venue:
            record_binding(journal, SIM_IDENTITY, previous, trio.current_time())
            run.venue = venue
            run.account_start = account_value(venue)
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
            # engine.running() has shut down: entries cancelled, unwinds done, hedges kept. A payment made since
            # the funding task's last poll is booked now, to the packages still holding the short.
            if options.funding_interval is not None:
                await engine.poll_funding(venue)
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
    strategy = run.options.strategy or PremiumTrigger(run.options.pairs, threshold=run.options.threshold)
    interval = run.options.funding_interval
    # The funding signal reads the rate a few times per (short) demo funding interval, as `run` does per 8 h.
    poll = min(1.0, interval / 5) if interval else 10.0
    driver = StrategyDriver(strategy, run.options.pairs, funding_poll=poll)
    rng = random.Random(run.options.seed + 1)
    async with trio.open_nursery() as nursery:
        if driver.needs_funding:
            nursery.start_soon(driver.poll_funding, engine)
        while True:
            await trio.sleep(0.05)
            if engine.mode is not EngineMode.RUNNING:
                continue
            decisions = driver.decide(engine, trio.current_time())
            for close in decisions.closes:
                driver.close(engine, close)
            for entry in decisions.entries:
                spec = driver.with_why(entry)
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
                driver.submitted(package_id, entry)
                if fault == "liquidation":
                    nursery.start_soon(_liquidate_when_hedged, run, package_id)


async def _liquidate_when_hedged(run: DemoRun, package_id: str) -> None:
    engine, venue = run.engine, run.venue
    assert engine is not None and venue is not None
    handle = engine.handles.get(package_id)
    if handle is None:  # already flat (refused) and released
        return
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
    # Flat packages released from memory: flat means each leg's residual is below its dust threshold.
    for residual in (engine.retired.spot, engine.retired.perp):
        for symbol, amount in residual.items():
            dust[symbol] = dust.get(symbol, Decimal(0)) + amount
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
        "packages_total": engine.packages_total,
        "final_states": dict(sorted(engine.final_states().items())),
        "orphaned_total": engine.orphaned_total,
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
        "pnl": pnl_summary(run, journal),
        "seconds": run.options.seconds,
        "seed": run.options.seed,
        "db": str(run.options.db),
    }


def account_value(venue: SimVenue) -> tuple[Decimal, dict[str, Decimal]]:
    """The venue account in two parts: quote (spot USDT free + locked, the perp wallet, the perps' unrealized
    P&L at the venue's mark) and every other asset held (base units)."""
    book = venue.engine
    quote = book.perp_wallet() + sum((book.unrealized_pnl(s) for s in book.positions()), Decimal(0))
    base: dict[str, Decimal] = {}
    for asset, b in book.balances().items():
        if asset == QUOTE:
            quote += b.free + b.locked
        else:
            base[asset] = b.free + b.locked
    return quote, base


def live_marks(venue: SimVenue) -> dict[str, Decimal]:
    """Spot: the mid; perp: the venue's mark price (what it values positions at)."""
    book = venue.engine
    marks: dict[str, Decimal] = {}
    for symbol, market in book.markets.items():
        mark = book.mid(symbol) if market.kind is MarketKind.SPOT else book.mark_price(symbol)
        if mark is not None:
            marks[symbol] = mark
    return marks


def released_cores(engine: Engine, journal: Journal) -> list[tuple[PackageCore, Decimal]]:
    """Packages released from memory once flat (`Engine.retired`), rebuilt from the journal with the funding
    attributed to them: the end-of-run summary counts every package, not only those still in memory."""
    out: list[tuple[PackageCore, Decimal]] = []
    for row in journal.packages():
        if row.package_id in engine.handles:
            continue
        funding = sum((funding_amount(r.payload) for r in journal.timeline(row.package_id) if r.kind == FUNDING),
                      Decimal(0))  # fmt: skip
        out.append((engine.core(row.package_id), funding))
    return out


def _plain(amount: Decimal) -> str:
    """An amount exactly, in positional notation: a difference of 2.7e-8 is "0.000000027", never str()'s
    "2.7E-8" (the summary is read by people and by scripts)."""
    return format(amount, "f")


def pnl_summary(run: DemoRun, journal: Journal) -> dict[str, Any]:
    """Every package's accounting added up, open packages marked to market at the venue's live marks, and
    set against the change of the venue account's value at the same marks (docs/accounting.md)."""
    engine, venue = run.engine, run.venue
    assert engine is not None and venue is not None
    marks = live_marks(venue)
    cores = [(h.core, h.funding) for h in engine.handles.values()] + released_cores(engine, journal)
    pnls: list[PackagePnl] = [package_pnl(core, funding) for core, funding in cores]
    zero = Decimal(0)
    fees: dict[str, Decimal] = {}
    for p in pnls:
        for leg in (p.spot, p.perp):
            for currency, amount in leg.fees.items():
                fees[currency] = fees.get(currency, zero) + amount
    # The desk's dust: what flat packages left, net of what open packages swept in (theirs now, in `unrealized`).
    dust = {a: q for a, q in desk_dust((c.plan.spot.symbol, c.state, c.exposure().spot, c.plan.sweep)
                                       for c, _ in cores).items() if q}  # fmt: skip
    values = [(p, p.value_at(marks)) for p in pnls]
    nobodys = unattributed_funding(journal)
    total = sum((v for _, v in values if v is not None), zero) + nobodys
    # A short the venue bought back itself (liquidation, ADL) is priced in none of the journal's orders. The
    # demo has the venue in hand: it takes those buy-backs' cash from the venue's own fills (in total, not per
    # package) and values the packages as holding what they hold after them.
    unpriced = [p for p, v in values if v is None]
    liquidations = zero
    if unpriced:
        for fill in venue.engine.fills():
            if fill.client_order_id.startswith(("autoclose-", "adl_autoclose-")):
                cash = fill.quantity * fill.price
                liquidations += (-cash if fill.side is Side.BUY else cash) - fill.fee
        for p in unpriced:
            after = replace(p, venue_reduced=zero, residual_perp=p.residual_perp + p.venue_reduced)
            total += after.value_at(marks) or zero
        total += liquidations
    out: dict[str, Any] = {
        "packages": len(pnls),
        "hedged": sum(1 for p in pnls if p.state is State.HEDGED),
        "realized": _plain(sum((p.realized for p in pnls if p.realized is not None), zero)),
        "unrealized": _plain(sum((v for p, v in values if p.state is not State.FLAT and v is not None), zero)),
        "fees": _plain(sum((p.fees_quote for p in pnls), zero)),
        "fees_by_currency": {c: _plain(a) for c, a in sorted(fees.items())},
        "funding": _plain(sum((p.funding for p in pnls), zero)),
        "funding_payments": len(venue.funding_paid),
        "funding_unattributed": _plain(nobodys),
        "slippage": _plain(sum((p.slippage for p in pnls), zero)),
        "dust": {a: _plain(q) for a, q in sorted(dust.items())},
        "dust_value": _plain(sum((q * marks.get(f"{a}/{QUOTE}", zero) for a, q in dust.items()), zero)),
        "unpriced": len(unpriced),
        "liquidation_cash": _plain(liquidations),
        "total": _plain(total),
        "marks": {s: _plain(m) for s, m in sorted(marks.items())},
    }
    if run.account_start is not None:
        (q0, b0), (q1, b1) = run.account_start, account_value(venue)
        change = q1 - q0 + sum(((b1.get(a, zero) - b0.get(a, zero)) * marks.get(f"{a}/{QUOTE}", zero)
                                for a in b0.keys() | b1.keys()), zero)  # fmt: skip
        filled = sum(1 for core, _ in cores for o in core.orders.values() if o.filled)
        tolerance = ROUNDING_PER_ORDER * max(filled, 1)
        out["venue_change"] = _plain(change)
        out["difference"] = _plain(change - total)
        out["reconciled"] = abs(change - total) <= tolerance
        out["tolerance"] = _plain(tolerance)
    return out


def _faults_injected(run: DemoRun) -> Counter[str]:
    assert run.venue is not None and run.engine is not None
    counts: Counter[str] = Counter(run.venue.faults_injected)
    if run.engine.stats.faults:
        counts["actor_crash"] = run.engine.stats.faults
    return counts
