"""`legguard run`: open the configured venue and journal, run the engine with the premium trigger until told
to stop (--seconds, SIGINT, SIGTERM), and shut down through the one graceful path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from legguard.adapters._venue import Venue
from legguard.engine._engine import Engine, EngineMode
from legguard.engine._recovery import RecoveryReport, settle_recovered
from legguard.engine._spec import PackageSpec, SpecError, validate_spec
from legguard.engine.journal import Durability, Journal

from ._config import ConfigError, RunConfig
from ._strategy import PremiumTrigger


@asynccontextmanager
async def open_venue(config: RunConfig) -> AsyncIterator[Venue]:
    """The venue the config names. ccxt is imported only for the kinds that need it."""
    if config.venue.kind == "sim":
        from legguard.adapters.sim._venue import SimConfig, open_sim_venue

        async with open_sim_venue(SimConfig(seed=config.venue.seed)) as sim:
            yield sim
        return
    from legguard.adapters.ccxt._venue import open_ccxt_venue_from_config

    async with open_ccxt_venue_from_config(config.venue) as venue:
        yield venue


@dataclass(slots=True)
class RunStatus:
    engine: Engine | None = None
    started: float = 0.0
    submitted: int = 0
    refused_specs: list[str] = field(default_factory=list)
    stop: trio.Event = field(default_factory=trio.Event)
    recovery: RecoveryReport | None = None  # what the start-up recovery found and did, if it ran


async def run_engine(
    config: RunConfig,
    db: Path,
    seconds: float | None,
    status: RunStatus | None = None,
    on_tick: Callable[[RunStatus], None] | None = None,
    on_recovered: Callable[[RecoveryReport], None] | None = None,
) -> dict[str, Any]:
    status = status or RunStatus()
    durability = Durability.POWER if config.durability == "power" else Durability.PROCESS
    journal = Journal.open(db, durability=durability)
    try:
        async with open_venue(config) as venue:
            engine = Engine(venue, journal, config.engine)
            status.engine = engine
            status.started = trio.current_time()
            symbols = [s for p in config.pairs for s in (p.spot_symbol, p.perp_symbol)]
            async with engine.running() as running:
                # Unknown symbols are refused here, after the venue told us its markets, before any order.
                for i, pair in enumerate(config.pairs):
                    try:
                        validate_spec(PackageSpec(pair.spot_symbol, pair.perp_symbol, pair.quantity), running.markets)
                    except SpecError as exc:
                        raise ConfigError(f"pairs[{i}]: {exc}") from None
                if journal.open_packages():
                    # A previous run left packages not flat: make them safe before opening any new one.
                    status.recovery = await settle_recovered(running, await running.recover())
                    if on_recovered is not None:
                        on_recovered(status.recovery)
                    if not status.recovery.ok:  # recovery halts by itself for what it found; this for the rest
                        running.halt(f"recovery left package(s) unsafe: {status.recovery.unsafe}")
                for symbol in symbols:
                    await running.watch_book(symbol)
                trigger = PremiumTrigger(config.pairs, threshold=config.premium_threshold, cooldown=config.cooldown)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_trade, running, trigger, status)
                    if on_tick is not None:
                        nursery.start_soon(_ticker, status, on_tick)
                    with trio.move_on_after(seconds if seconds is not None else float("inf")):
                        await status.stop.wait()
                    nursery.cancel_scope.cancel()
            report = summary(engine, db)
            if status.recovery is not None:
                report["recovery"] = status.recovery.to_dict()
                # Packages recovery set aside are not the engine's, but they still need an operator.
                report["needs_recovery"].update(status.recovery.unsafe)
                if not status.recovery.ok_so_far:
                    report["needs_operator"] = status.recovery.needs_operator()
            return report
    finally:
        journal.close()


async def _trade(engine: Engine, trigger: PremiumTrigger, status: RunStatus) -> None:
    while True:
        await trio.sleep(0.05)
        if engine.mode is not EngineMode.RUNNING or engine.outage.down:
            continue
        for spec in trigger.propose(engine.books, trio.current_time()):
            engine.submit(spec)
            status.submitted += 1


async def _ticker(status: RunStatus, on_tick: Callable[[RunStatus], None]) -> None:
    while True:
        on_tick(status)
        await trio.sleep(0.5)


def summary(engine: Engine, db: Path) -> dict[str, Any]:
    stats = engine.stats
    return {
        "packages_total": len(engine.handles),
        "final_states": dict(sorted(engine.final_states().items())),
        "orphaned_total": sum(1 for h in engine.handles.values() if h.ever_orphaned),
        "unwound_total": stats.unwound,
        "max_naked_ms": round(stats.max_naked * 1000, 3),
        "halts": stats.halts,
        "stream_drops": stats.stream_drops,
        "venue_outages": engine.outage.outages,
        "venue_down_at_exit": engine.outage.down,
        # Not flat, not hedged-and-quiet, or of unknown exposure: `legguard recover` finishes them.
        "needs_recovery": engine.needs_recovery(),
        "db": str(db),
    }
