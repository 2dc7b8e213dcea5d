"""Execution quality, side by side on one seeded market and one fault plan: the seed blueprint's naive `gather`
of two post-only limits with no unwind (the baseline), and legguard in each execution style.

Every contestant trades the same packages at the same (virtual) times against a fresh simulated venue with the
same seed, so the market's moves and trade flow are the same sequence; the same venue faults are injected on the
same legs. Everything is measured from the venue's own fills, the same way for every contestant:

- hedged / orphaned: the entry legs ended with equal fills / with unequal fills (legguard's orphaned packages are
  then flattened by the kill switch; the baseline's stay as they are);
- naked-exposure time: how long a package's legs held unequal fills (entries and unwinds), to the end of the
  run, over all packages (one never naked counts 0 s);
- exposure left: the unmatched base quantity at the end, in quote at the last mid;
- cost per package: fees (base fees at the fill price) plus the unwind's slippage against the entry price.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
import trio.testing

from legguard.adapters.market._matching import Fill
from legguard.adapters.sim._venue import SimConfig, SimVenue, open_sim_venue
from legguard.domain import OrderRequest, OrderType, Side, VenueError
from legguard.engine._engine import Engine
from legguard.engine._pricing import PricingRefused, price_package
from legguard.engine._spec import BreakerConfig, Deadlines, EngineConfig, PackageSpec
from legguard.engine.journal import Durability, Journal
from legguard.fsm import ExecutionStyle, State

SPOT, PERP = "ETH/USDT", "ETH/USDT:USDT"
QTY = Decimal("0.05")
NAIVE = "naive gather (baseline)"
CONTESTANTS: tuple[str, ...] = (NAIVE, *(s.value for s in ExecutionStyle))
# Venue faults only, so that the baseline (which has no actor to crash and holds no hedge to liquidate) meets
# exactly the same plan.
VENUE_FAULTS: tuple[str, ...] = ("reject", "postonly_cross", "partial_fill", "ack_timeout", "stream_drop", "price_jump")
DEADLINES = Deadlines(ack=1.0, fill=3.0, unwind=5.0, leg=1.0)  # the demo's
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Planned:
    at: float  # seconds after the start
    fault: str | None
    leg: str  # the symbol the fault is injected on


def plan_packages(packages: int, seed: int, fault_rate: float, spacing: float) -> list[Planned]:
    rng = random.Random(f"{seed}:quality")
    out = []
    for i in range(packages):
        fault = rng.choice(VENUE_FAULTS) if rng.random() < fault_rate else None
        out.append(Planned(1.0 + i * spacing, fault, rng.choice((SPOT, PERP))))
    return out


def _inject(venue: SimVenue, p: Planned) -> None:
    if p.fault is None:
        return
    if p.fault == "price_jump":
        venue.inject("price_jump", symbol=PERP, pct=0.6 if p.at % 2 < 1 else -0.6)
    elif p.fault == "partial_fill":
        venue.inject("partial_fill", symbol=p.leg, fraction=0.4)
    elif p.fault == "stream_drop":
        venue.inject("stream_drop", seconds=0.5)
    else:
        venue.inject(p.fault, symbol=p.leg)


@dataclass(slots=True)
class Outcome:
    """One contestant's packages, measured from the venue's fills."""

    name: str
    packages: int = 0
    hedged: int = 0
    orphaned: int = 0
    flat: int = 0  # no fills on either leg, or unwound to flat
    naked_s: list[float] = field(default_factory=list)  # per package that was ever naked
    exposure_left_quote: Decimal = Decimal(0)
    exposed_at_end: int = 0
    fees_quote: Decimal = Decimal(0)
    unwind_slippage_quote: Decimal = Decimal(0)

    def to_dict(self) -> dict[str, Any]:
        naked = sorted(self.naked_s)
        all_naked = naked + [0.0] * (self.packages - len(naked))  # never-naked packages count as 0 s
        cost = (self.fees_quote + self.unwind_slippage_quote) / self.packages if self.packages else Decimal(0)
        return {
            "packages": self.packages,
            "hedged": self.hedged,
            "orphaned": self.orphaned,
            "flat": self.flat,
            "naked_p50_s": round(_pct(all_naked, 0.5), 3),
            "naked_p99_s": round(_pct(all_naked, 0.99), 3),
            "naked_packages": len(naked),
            "exposure_left_quote": str(self.exposure_left_quote.quantize(Decimal("0.01"))),
            "exposed_at_end": self.exposed_at_end,
            "fees_quote": str(self.fees_quote.quantize(Decimal("0.0001"))),
            "unwind_slippage_quote": str(self.unwind_slippage_quote.quantize(Decimal("0.0001"))),
            "cost_per_package_quote": str(cost.quantize(Decimal("0.0001"))),
        }


def _pct(xs: Sequence[float], p: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    k = (len(s) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def measure(name: str, prefixes: Sequence[str], fills: Sequence[Fill], end: float, mids: dict[str, Decimal]) -> Outcome:
    """Score packages (each identified by its client order id prefix) from the venue's fills."""
    out = Outcome(name)
    by_prefix: dict[str, list[Fill]] = {p: [] for p in prefixes}
    for f in fills:
        prefix = f.client_order_id.rsplit("-", 1)[0]
        if prefix in by_prefix:
            by_prefix[prefix].append(f)
    threshold = Decimal("0.001")  # the perp's step: a smaller difference is the spot fee charged in base
    for prefix in prefixes:
        out.packages += 1
        pf = sorted(by_prefix[prefix], key=lambda f: f.timestamp)
        spot = perp = Decimal(0)  # signed base: spot long, perp short (as a positive number)
        entry_cost: dict[str, tuple[Decimal, Decimal]] = {}  # symbol -> (quantity, notional) of entries
        naked_since: float | None = None
        naked = 0.0
        ever = False
        for f in pf:
            unwind = "U" in f.client_order_id.rsplit("-", 1)[1]
            out.fees_quote += f.fee * f.price if f.fee_asset != "USDT" else f.fee
            if f.symbol == SPOT:
                spot += f.quantity if f.side is Side.BUY else -f.quantity
            else:
                perp += f.quantity if f.side is Side.SELL else -f.quantity
            if unwind:
                q, n = entry_cost.get(f.symbol, (Decimal(0), Decimal(0)))
                if q:
                    avg = n / q
                    # spot: bought at avg, sold back at f.price; perp: sold at avg, bought back at f.price
                    loss = (avg - f.price) if f.symbol == SPOT else (f.price - avg)
                    out.unwind_slippage_quote += loss * f.quantity
            else:
                q, n = entry_cost.get(f.symbol, (Decimal(0), Decimal(0)))
                entry_cost[f.symbol] = (q + f.quantity, n + f.quantity * f.price)
            unequal = abs(spot - perp) >= threshold
            if unequal and naked_since is None:
                naked_since, ever = f.timestamp, True
            elif not unequal and naked_since is not None:
                naked += f.timestamp - naked_since
                naked_since = None
        if naked_since is not None:
            naked += end - naked_since
        left = abs(spot - perp)
        if left >= threshold:
            out.exposed_at_end += 1
            out.exposure_left_quote += left * mids.get(SPOT, Decimal(0))
        if ever:
            out.naked_s.append(naked)
        spot_entry = entry_cost.get(SPOT, (Decimal(0), Decimal(0)))[0]
        perp_entry = entry_cost.get(PERP, (Decimal(0), Decimal(0)))[0]
        if abs(spot_entry - perp_entry) >= threshold:
            out.orphaned += 1  # the entries ended unequal: legguard's kill switch flattened it, the baseline kept it
        elif spot_entry > 0:
            out.hedged += 1
        else:
            out.flat += 1
    return out


async def _legguard(style: ExecutionStyle, plan: Sequence[Planned], seed: int, directory: Path) -> Outcome:
    journal = Journal.open(directory / f"quality-{style.value}.db", durability=Durability.PROCESS)
    config = EngineConfig(deadlines=DEADLINES, breaker=BreakerConfig(max_orphans=10_000, window=1.0))
    try:
        async with open_sim_venue(SimConfig(seed=seed)) as venue:
            engine = Engine(venue, journal, config)
            async with engine.running([SPOT, PERP]):
                start = trio.current_time()
                handles = []  # held here: the engine releases a flat package's handle
                for p in plan:
                    await trio.sleep_until(start + p.at)
                    _inject(venue, p)
                    spec = PackageSpec(SPOT, PERP, QTY, min_spread=Decimal(-1), execution=style)
                    handles.append(engine.handles[engine.submit(spec)])
                with trio.move_on_after(60):
                    for h in handles:
                        await h.wait_until(
                            lambda c: c.state is State.FLAT or (c.state is State.HEDGED and c.is_quiescent())
                        )
                await trio.sleep(1.0)
                end = trio.current_time()
                prefixes = [h.core.plan.client_id_prefix for h in handles]
                mids = {SPOT: venue.engine.mid(SPOT) or Decimal(0)}
                return measure(style.value, prefixes, venue.engine.fills(), end, mids)
    finally:
        journal.close()


async def _naive(plan: Sequence[Planned], seed: int) -> Outcome:
    """The blueprint's `gather`: both post-only limits at once, priced like legguard's maker legs; at the fill
    deadline whatever rests is cancelled; nothing is ever unwound."""
    async with open_sim_venue(SimConfig(seed=seed)) as venue:
        markets = await venue.load_markets()
        await trio.sleep(0.5)
        start = trio.current_time()
        prefixes: list[str] = []

        async def package(i: int) -> None:
            prefix = f"naive{i:05d}"
            prefixes.append(prefix)
            try:
                priced = price_package(
                    await venue.fetch_order_book(SPOT), await venue.fetch_order_book(PERP), markets[SPOT],
                    markets[PERP], QTY, Decimal(-1),
                )  # fmt: skip
            except PricingRefused:
                return
            legs = (
                OrderRequest(
                    f"{prefix}-SE0", SPOT, Side.BUY, OrderType.LIMIT, priced.quantity, priced.spot_price, post_only=True
                ),
                OrderRequest(
                    f"{prefix}-PE0",
                    PERP,
                    Side.SELL,
                    OrderType.LIMIT,
                    priced.quantity,
                    priced.perp_price,
                    post_only=True,
                ),
            )

            async def send(request: OrderRequest) -> None:
                with trio.move_on_after(DEADLINES.ack), contextlib.suppress(VenueError):
                    await venue.fire(venue.arm(request))

            async with trio.open_nursery() as gather:
                for request in legs:
                    gather.start_soon(send, request)
            await trio.sleep(DEADLINES.fill)
            for request in legs:
                with trio.move_on_after(DEADLINES.ack), contextlib.suppress(VenueError):
                    await venue.cancel_order(request.symbol, request.client_order_id)

        async with trio.open_nursery() as nursery:
            for i, p in enumerate(plan):
                await trio.sleep_until(start + p.at)
                _inject(venue, p)
                nursery.start_soon(package, i)
        await trio.sleep(1.0)
        mids = {SPOT: venue.engine.mid(SPOT) or Decimal(0)}
        return measure(NAIVE, sorted(prefixes), venue.engine.fills(), trio.current_time(), mids)


def quality_run(
    packages: int, directory: Path, *, seed: int = 7, fault_rate: float = 0.15, spacing: float = 0.5, log: Log = print
) -> dict[str, Any]:
    """Every contestant on the same market and fault plan, in virtual time; results keyed by contestant."""
    if packages < 1 or not (0 <= fault_rate <= 1) or not math.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"quality_run: packages >= 1, fault_rate in [0, 1], spacing > 0; got {packages}, "
                         f"{fault_rate}, {spacing}")  # fmt: skip
    plan = plan_packages(packages, seed, fault_rate, spacing)
    results: dict[str, Any] = {}
    for name in CONTESTANTS:
        log(f"execution quality: {name}, {packages} packages")
        clock = trio.testing.MockClock(autojump_threshold=0)
        if name == NAIVE:
            outcome = trio.run(_naive, plan, seed, clock=clock)
        else:
            outcome = trio.run(_legguard, ExecutionStyle(name), plan, seed, directory, clock=clock)
        results[name] = outcome.to_dict()
    faults: dict[str, int] = {}
    for p in plan:
        if p.fault is not None:
            faults[p.fault] = faults.get(p.fault, 0) + 1
    return {"seed": seed, "fault_rate": fault_rate, "spacing_s": spacing, "faults": faults, "results": results}


def quality_table(result: dict[str, Any]) -> str:
    """The markdown table of `docs/performance.md`."""
    rows = [
        "| execution | packages | hedged | orphaned | naked p50 / p99 (s) | exposure left (USDT) | cost / package "
        "(USDT: fees + unwind slippage) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["results"].items():
        rows.append(
            f"| {name} | {r['packages']} | {r['hedged']} | {r['orphaned']} | {r['naked_p50_s']:.3f} / "
            f"{r['naked_p99_s']:.3f} | {r['exposure_left_quote']} ({r['exposed_at_end']} packages) | "
            f"{r['cost_per_package_quote']} ({r['fees_quote']} + {r['unwind_slippage_quote']}) |"
        )
    return "\n".join(rows) + "\n"
