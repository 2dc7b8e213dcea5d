"""`legguard run`: open the configured venue and journal, run the engine with the configured strategy until
told to stop (--seconds, SIGINT, SIGTERM), and shut down through the one graceful path."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from legguard.adapters._redact import SECRETS
from legguard.adapters._venue import Venue
from legguard.domain import VenueError
from legguard.engine._engine import Engine, EngineMode
from legguard.engine._observe import notify
from legguard.engine._recovery import RecoveryReport, settle_recovered
from legguard.engine._spec import PackageSpec, SpecError, validate_spec
from legguard.engine.journal import Durability, Journal, JournalError
from legguard.engine.journal._anchors import Anchorer, default_anchors_path, load_or_create_key
from legguard.engine.journal._binding import (
    SIM_ACCOUNT,
    VenueIdentity,
    account_fingerprint,
    check_binding,
    record_binding,
)

from ._alerts import Alerter
from ._config import ConfigError, RunConfig, VenueConfig
from ._control import claim_socket, serve_control, socket_path
from ._instrument import metered
from ._metrics import EngineMetrics, open_metrics_listeners, serve_metrics
from ._preflight import BudgetedVenue, PreflightFailed, PreflightReport, preflight, unreachable
from ._rpc import Rpc
from ._strategy import StrategyDriver

log = logging.getLogger("legguard.engine.runner")


@asynccontextmanager
async def open_venue(
    config: RunConfig, before_trading: Callable[[Venue], Awaitable[None]] | None = None
) -> AsyncIterator[Venue]:
    """The venue the config names. ccxt is imported only for the kinds that need it. `before_trading` (the
    preflight) runs once the venue is open, before any user stream or order."""
    if config.venue.kind == "sim":
        from legguard.adapters.sim._venue import SimConfig, open_sim_venue

        async with open_sim_venue(SimConfig(seed=config.venue.seed)) as sim:
            if before_trading is not None:
                await before_trading(sim)
            yield sim
        return
    from legguard.adapters.ccxt._venue import open_ccxt_venue_from_config

    async with open_ccxt_venue_from_config(config.venue, before_trading) as venue:
        yield venue


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How `run` is operated (the command line; the TOML config has the rest)."""

    control: bool = True  # serve the control socket `<db>.sock` (legguard status / halt / resume / close / stop)
    metrics_port: int | None = None  # overrides [metrics] port; 0 picks a free port
    metrics_host: str | None = None  # overrides [metrics] host
    tick_interval: float = 0.5  # seconds between on_tick calls


PREFLIGHT_REFILL_LIMIT = 10.0  # seconds the start may wait for the request budget the preflight spent


def identity_of(venue: VenueConfig, journal_id: str, environ: Mapping[str, str] | None = None) -> VenueIdentity:
    """Who the config trades as, without any secret (reads the credentials from the environment)."""
    credentials = venue.credentials(environ)
    account = SIM_ACCOUNT if credentials is None else account_fingerprint(credentials.api_key, journal_id)
    return VenueIdentity(venue.kind, venue.endpoint, account)


@asynccontextmanager
async def open_checked_venue(
    config: RunConfig,
    journal: Journal | None = None,
    *,
    rebind: bool = False,
    on_preflight: Callable[[PreflightReport], None] | None = None,
) -> AsyncIterator[Venue]:
    """The configured venue, opened only if every preflight check passes (else PreflightFailed: nothing was
    sent) and, with a journal, only if the journal belongs to this venue and account (else BindingMismatch,
    before anything connects). The binding is journaled on first use, once the preflight has passed."""
    identity = previous = None
    if journal is not None:
        identity = identity_of(config.venue, journal.journal_id)
        previous = check_binding(journal, identity, rebind=rebind)
    else:
        config.venue.credentials()  # a missing variable is a config error before anything connects
    where = config.venue.endpoint

    async def check(venue: Venue) -> None:
        report = await preflight(venue, config.pairs, where=where, leverage=config.venue.leverage,
                                 margin_type=config.venue.margin_type)  # fmt: skip
        if on_preflight is not None:
            on_preflight(report)
        if not report.ok:
            raise PreflightFailed(report)
        if isinstance(venue, BudgetedVenue):
            with trio.move_on_after(PREFLIGHT_REFILL_LIMIT):
                await venue.refill_budgets()

    opened = False
    try:
        async with open_venue(config, check) as venue:
            opened = True
            if journal is not None and identity is not None:
                record_binding(journal, identity, previous, trio.current_time())
            yield venue
    except BaseException as exc:
        reason = None if opened else _opening_failure(exc)
        if reason is None:
            raise
        if isinstance(reason, PreflightFailed):
            raise reason from None
        failed = unreachable(where, reason)
        if on_preflight is not None:
            on_preflight(failed)
        raise PreflightFailed(failed) from None


class _Checked(Exception):
    """Stops `check_venue` right after the preflight: no user stream is opened for a check."""


async def check_venue(config: RunConfig) -> PreflightReport:
    """`legguard check`: open the venue only as far as the preflight, run it, close. Never raises for a venue
    answer (it is a failed check in the report); a missing credential variable is a ConfigError."""
    config.venue.credentials()
    where = config.venue.endpoint
    seen: list[PreflightReport] = []

    async def check(venue: Venue) -> None:
        seen.append(await preflight(venue, config.pairs, where=where, leverage=config.venue.leverage,
                                    margin_type=config.venue.margin_type))  # fmt: skip
        raise _Checked

    try:
        async with open_venue(config, check):
            pass  # not reached: the check always stops the opening
    except BaseException as exc:
        if seen and _only(exc, _Checked):
            return seen[-1]
        reason = _opening_failure(exc)
        if reason is None:
            raise
        return reason.report if isinstance(reason, PreflightFailed) else unreachable(where, reason)
    return seen[-1]


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """`exc` is `kind`, or a group of nothing but `kind` (and trio's cancellations)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(e, kind) or isinstance(e, trio.Cancelled) for e in exc.exceptions)
    return isinstance(exc, kind)


def _opening_failure(exc: BaseException) -> BaseException | None:
    """The preflight refusal or venue error that stopped the venue from opening (trio may have wrapped it in
    an ExceptionGroup); None for anything else, which is not ours to translate."""
    if isinstance(exc, PreflightFailed | VenueError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_opening_failure(e) for e in exc.exceptions]
        found = [leaf for leaf in leaves if leaf is not None]
        others = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled) and _opening_failure(e) is None]
        return found[0] if found and not others else None
    return None


@dataclass(slots=True)
class RunStatus:
    engine: Engine | None = None
    rpc: Rpc | None = None
    metrics: EngineMetrics | None = None
    metrics_port: int | None = None  # the port actually bound
    alerter: Alerter | None = None
    started: float = 0.0
    submitted: int = 0
    refused_specs: list[str] = field(default_factory=list)
    stop: trio.Event = field(default_factory=trio.Event)
    ready: trio.Event = field(default_factory=trio.Event)  # set once trading starts (control, metrics up)
    recovery: RecoveryReport | None = None  # what the start-up recovery found and did, if it ran
    anchorer: Anchorer | None = None  # signs the journal's head, if a key is configured
    strategy: StrategyDriver | None = None  # what proposes packages (set once trading starts)


async def run_engine(
    config: RunConfig,
    db: Path,
    seconds: float | None,
    status: RunStatus | None = None,
    on_tick: Callable[[RunStatus], None] | None = None,
    on_recovered: Callable[[RecoveryReport], None] | None = None,
    options: RunOptions | None = None,
    *,
    rebind: bool = False,
    on_preflight: Callable[[PreflightReport], None] | None = None,
    on_trading: Callable[[], None] | None = None,
) -> dict[str, Any]:
    status = status or RunStatus()
    options = options or RunOptions()
    durability = Durability.POWER if config.durability == "power" else Durability.PROCESS
    sock = socket_path(db)
    if options.control:
        claim_socket(sock)  # before the journal is opened for writing: one engine per journal
    port = options.metrics_port if options.metrics_port is not None else config.metrics.port
    host = options.metrics_host or config.metrics.host
    webhook = config.alerts.webhook_url
    key = load_or_create_key(config.anchor_key) if config.anchor_key is not None else None
    journal = Journal.open(db, durability=durability)
    anchorer = None if key is None else Anchorer(journal, key, config.anchors or default_anchors_path(db))
    status.anchorer = anchorer
    listeners: list[trio.SocketListener] | None = None
    try:
        if webhook is not None:
            SECRETS.add(webhook)  # it embeds a token: masked in every log line
        # Bound before the venue opens: a busy port is one clear error before anything is sent.
        listeners = await open_metrics_listeners(host, port) if port is not None else None
        async with (
            open_checked_venue(config, journal, rebind=rebind, on_preflight=on_preflight) as raw_venue,
            trio.open_nursery() as operated,
        ):
            if on_trading is not None:
                on_trading()
            venue = metered(raw_venue)
            engine = Engine(venue, journal, config.engine)
            status.engine = engine
            status.started = trio.current_time()
            budget = getattr(raw_venue, "request_budget", None)
            status.rpc = Rpc(engine, status.stop, db=str(db),
                             extra={"budget": budget} if budget is not None else None)  # fmt: skip
            if listeners is not None:
                status.metrics = EngineMetrics(engine, budget)
                venue.observe = status.metrics.observe_request
                engine.observers.append(status.metrics)
                status.metrics_port = await operated.start(serve_metrics, status.metrics, listeners)
            if webhook is not None:
                counted = status.metrics.count_alert if status.metrics is not None else None
                status.alerter = Alerter(config.alerts, journal_id=journal.journal_id, count=counted)
                engine.observers.append(status.alerter)
                operated.start_soon(status.alerter.run)
            if options.control:
                await operated.start(serve_control, status.rpc, sock)
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
                    notify(engine.observers, "on_recovery", status.recovery)
                    if not status.recovery.ok:  # recovery halts by itself for what it found; this for the rest
                        running.halt(f"recovery left package(s) unsafe: {status.recovery.unsafe}")
                for symbol in symbols:
                    await running.watch_book(symbol)
                driver = StrategyDriver(config.strategy.make(config.pairs), config.pairs,
                                        funding_poll=config.strategy.funding_poll)  # fmt: skip
                status.strategy = driver
                status.rpc.extra["strategy"] = driver.report  # `legguard status`: the strategy's latest numbers
                freeze_startup_heap()
                status.ready.set()
                async with trio.open_nursery() as nursery:
                    if anchorer is not None:
                        anchorer.anchor("start")
                        nursery.start_soon(_anchor_loop, anchorer, config.anchor_interval)
                    nursery.start_soon(_trade, running, driver, status)
                    if driver.needs_funding:
                        nursery.start_soon(driver.poll_funding, running)
                    if on_tick is not None:
                        nursery.start_soon(_ticker, status, on_tick, options.tick_interval)
                    with trio.move_on_after(seconds if seconds is not None else float("inf")):
                        await status.stop.wait()
                    nursery.cancel_scope.cancel()
            report = summary(engine, db)
            report["strategy"] = driver.report()
            # The venue's word, not the engine's beliefs, decides whether the run ended safe.
            problems = await engine.venue_check()
            report["venue_check"] = {"ok": not problems, "problems": problems}
            if status.recovery is not None:
                report["recovery"] = status.recovery.to_dict()
                # Packages recovery set aside are not the engine's, but they still need an operator.
                report["needs_recovery"].update(status.recovery.unsafe)
                if not status.recovery.ok_so_far:
                    report["needs_operator"] = status.recovery.needs_operator()
            if anchorer is not None:
                last = anchorer.anchor("shutdown") or anchorer.last
                report["anchors"] = {"file": str(anchorer.path), "written": anchorer.written,
                                     "last_seq": None if last is None else last.seq}  # fmt: skip
            if status.alerter is not None:
                await status.alerter.drain()  # what the shutdown alerted, within the POST timeout
                report["alerts"] = status.alerter.counts()
            operated.cancel_scope.cancel()
            return report
    finally:
        gc.unfreeze()  # the run is over: what start-up built is the collector's again (many runs per process)
        journal.close()
        if listeners is not None:
            for listener in listeners:
                listener.socket.close()
        if webhook is not None:
            SECRETS.discard(webhook)


def freeze_startup_heap() -> None:
    """Move everything start-up built (ccxt's exchange classes and markets, the engine, recovered packages:
    ~240,000 objects) out of the cyclic garbage collector's sight, so its full collections scan only what the
    run creates: a full collection over the start-up heap took ~170 ms on the engine thread (measured,
    docs/performance.md), a pause no kill switch can afford. Garbage is collected first; what start-up built
    and later drops in a reference cycle waits for the end of the run (`gc.unfreeze`, bounded by the start-up
    heap); anything freed by reference counting is reclaimed at once as always."""
    gc.collect()
    gc.freeze()


async def _anchor_loop(anchorer: Anchorer, interval: float) -> None:
    """A signed anchor of the journal's head every `interval` seconds (none while nothing was written)."""
    while True:
        await trio.sleep(interval)
        try:
            anchorer.anchor("periodic")
        except JournalError as exc:  # an unwritable anchors file must not stop the engine: say so loudly
            log.error("journal anchor failed: %s", exc)


async def _trade(engine: Engine, driver: StrategyDriver, status: RunStatus) -> None:
    held: dict[str, str] = {}  # pair -> the limit it is held back by (logged once per change)
    while True:
        await trio.sleep(0.05)
        if engine.mode is not EngineMode.RUNNING or engine.outage.down:
            continue
        decisions = driver.decide(engine, trio.current_time())
        for close in decisions.closes:
            driver.close(engine, close)
        for entry in decisions.entries:
            spec = driver.with_why(entry)
            limit = engine.entry_limit(spec)
            if limit is not None:
                if held.get(spec.spot_symbol) != limit.split(":")[0]:
                    held[spec.spot_symbol] = limit.split(":")[0]
                    log.info("%s: not proposing while %s", spec.spot_symbol, limit)
                continue
            held.pop(spec.spot_symbol, None)
            try:
                package_id = engine.submit(spec)
            except SpecError as exc:  # a strategy's malformed proposal: refused before anything is journaled
                text = f"{driver.name}: {exc}"
                if text not in status.refused_specs[-10:]:
                    log.warning("strategy proposal refused: %s", text)
                status.refused_specs.append(text)
                del status.refused_specs[:-100]
                continue
            driver.submitted(package_id, entry)
            status.submitted += 1


async def _ticker(status: RunStatus, on_tick: Callable[[RunStatus], None], interval: float) -> None:
    while True:
        on_tick(status)
        await trio.sleep(interval)


def summary(engine: Engine, db: Path) -> dict[str, Any]:
    stats = engine.stats
    out: dict[str, Any] = {
        "packages_total": engine.packages_total,
        "final_states": dict(sorted(engine.final_states().items())),
        "orphaned_total": engine.orphaned_total,
        "unwound_total": stats.unwound,
        "closed_total": stats.closed,
        "exits_by_policy": dict(sorted(stats.exits.items())),
        "max_naked_ms": round(stats.max_naked * 1000, 3),
        "halts": stats.halts,
        "auto_resumes": stats.auto_resumes,
        "mode": engine.mode.value if engine.mode is not EngineMode.STOPPING else "stopped",
        "stream_drops": stats.stream_drops,
        "kill_switch_prepared": engine.kill_switch_prepared(),
        # ccxt venues: REST queries for an order's fees, made because no answer carried them (None: the sim's)
        "fee_queries": getattr(engine.venue, "fee_queries", None),
        "venue_outages": engine.outage.outages,
        "venue_down_at_exit": engine.outage.down,
        # Not flat, not hedged-and-quiet, or of unknown exposure: `legguard recover` finishes them.
        "needs_recovery": engine.needs_recovery(),
        "db": str(db),
    }
    if engine.config.keep_warm is not None:  # what keeping the decision path warm cost (`engine.keep_warm`)
        warmer = engine.warmer
        out["keep_warm"] = {"interval_s": engine.config.keep_warm, "rounds": warmer.rounds,
                            "seconds": round(warmer.seconds, 3), "failed": warmer.failed}  # fmt: skip
    return out
