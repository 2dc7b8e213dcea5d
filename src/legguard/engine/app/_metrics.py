"""Prometheus metrics of one engine, on its own `CollectorRegistry` (never the process-global one), served by
a small trio HTTP responder in the engine's nursery (so a scrape reads engine state on the engine's thread).

Names are API (docs/grafana-dashboard.json and operators' alerts use them): `legguard_` prefix, unit in the
name, `_total` counters, labels only from bounded sets (state, trigger, asset, symbol, endpoint; never a
package id). Events are counted as they happen (the observer hooks); levels (packages by state, exposure,
mode, ages) are read from the engine at scrape time.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from legguard.engine._observe import EngineObserver, HaltSource
from legguard.fsm import State

if TYPE_CHECKING:
    from legguard.engine._engine import Engine
    from legguard.engine._handle import PackageHandle
    from legguard.fsm import Transitioned

log = logging.getLogger("legguard.metrics")

# Seconds: the kill switch reacts in microseconds to milliseconds; unwinds take milliseconds to the deadline.
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class EngineMetrics(EngineObserver):
    def __init__(self, engine: Engine, budget: Callable[[], Mapping[str, float]] | None = None) -> None:
        self.engine = engine
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: noise on every dashboard (process-wide, idempotent)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.transitions = Counter("legguard_transitions", "Package state transitions.", ["trigger", "to"], registry=r)
        self.orphans = Counter(
            "legguard_orphan_events", "Packages that entered orphaned (the kill switch).", registry=r
        )
        self.halts = Counter("legguard_halts", "Engine halts, by who halted.", ["source"], registry=r)
        self.resumes = Counter("legguard_resumes", "Engine resumes.", ["automatic"], registry=r)
        self.unwind_overdue = Counter("legguard_unwind_overdue", "Unwinds past the unwind deadline.", registry=r)
        self.venue_outages = Counter(
            "legguard_venue_outages",
            "Venue outages declared (a request and a probe unanswered).",
            registry=r,
        )
        self.reaction = Histogram(
            "legguard_kill_switch_reaction_seconds",
            "From the event that broke a package to its kill switch's orders going out (decision, journal, send).",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.unwind = Histogram(
            "legguard_unwind_duration_seconds",
            "From unwinding to flat or hedged (trim).",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.naked = Histogram(
            "legguard_naked_exposure_seconds",
            "How long one leg held more than the other, per episode.",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.request = Histogram(
            "legguard_venue_request_duration_seconds",
            "Venue request latency.",
            ["endpoint"],
            buckets=(*FAST_BUCKETS, 5.0, 10.0),
            registry=r,
        )
        self.request_errors = Counter(
            "legguard_venue_request_errors", "Venue requests that failed.", ["endpoint", "error"], registry=r
        )
        self.commit = Histogram(
            "legguard_journal_commit_duration_seconds",
            "Journal transaction commit time.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.alerts = Counter(
            "legguard_alerts",
            "Alerts, by kind and outcome (sent, failed, dropped, deduped).",
            ["kind", "outcome"],
            registry=r,
        )
        r.register(_Levels(engine, budget))
        engine.journal.on_commit = self.commit.observe

    # --- observer hooks -------------------------------------------------------------------------------

    def on_transition(self, handle: PackageHandle, t: Transitioned, now: float) -> None:
        self.transitions.labels(t.trigger.value, t.dest.value).inc()
        if t.dest is State.ORPHANED:
            self.orphans.inc()
        elif t.source is State.UNWINDING and handle.unwinding_since is not None:
            self.unwind.observe(now - handle.unwinding_since)

    def on_kill_switch(self, seconds: float) -> None:
        self.reaction.observe(seconds)

    def on_halt(self, reason: str, source: HaltSource) -> None:
        self.halts.labels(source.value).inc()

    def on_resume(self, reason: str, automatic: bool) -> None:
        self.resumes.labels(str(automatic).lower()).inc()

    def on_unwind_overdue(self, package_id: str) -> None:
        self.unwind_overdue.inc()

    def on_naked(self, seconds: float) -> None:
        self.naked.observe(seconds)

    def on_venue_health(self, healthy: bool, detail: str) -> None:
        if not healthy:
            self.venue_outages.inc()

    # --- the venue wrapper's hook (see _instrument.py) ----------------------------------------------

    def observe_request(self, endpoint: str, seconds: float, error: str | None) -> None:
        if error is None:
            self.request.labels(endpoint).observe(seconds)
        else:
            self.request_errors.labels(endpoint, error).inc()

    def count_alert(self, kind: str, outcome: str) -> None:
        self.alerts.labels(kind, outcome).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Levels(Collector):
    """Gauges read from the engine at scrape time."""

    def __init__(self, engine: Engine, budget: Callable[[], Mapping[str, float]] | None) -> None:
        self.engine = engine
        self.budget = budget

    def collect(self) -> Iterable[Metric]:
        e = self.engine
        now = trio.current_time()
        packages = GaugeMetricFamily("legguard_packages", "Packages by current state.", labels=["state"])
        counts = dict.fromkeys((s.value for s in State), 0)
        exposure: dict[str, dict[str, Decimal]] = {}
        for h in e.handles.values():
            core = h.core
            counts[core.state.value] += 1
            if core.state is State.FLAT:
                continue
            exp = core.exposure()
            market = e.markets.get(core.plan.spot.symbol)
            asset = market.base if market is not None else core.plan.spot.symbol.split("/", 1)[0]
            a = exposure.setdefault(asset, {"net": Decimal(0), "gross": Decimal(0), "naked": Decimal(0)})
            a["net"] += exp.net
            a["gross"] += abs(exp.spot) + abs(exp.perp)
            a["naked"] += core.unmatched()
        counts[State.FLAT.value] += len(e.retired)  # flat packages released from memory
        for state, n in counts.items():
            packages.add_metric([state], n)
        yield packages
        yield GaugeMetricFamily("legguard_live_packages", "Packages neither hedged nor flat.", value=len(e.live))
        held = GaugeMetricFamily(
            "legguard_exposure_base",
            "Open exposure per asset in base units (net = spot + perp; gross = |spot| + |perp|; naked = unmatched).",
            labels=["asset", "measure"],
        )
        for asset, x in sorted(exposure.items()):
            for measure, value in x.items():
                held.add_metric([asset, measure], float(value))
        yield held
        mode = GaugeMetricFamily("legguard_engine_mode", "1 for the engine's current mode.", labels=["mode"])
        for m in ("running", "halted", "stopping"):
            mode.add_metric([m], 1.0 if e.mode.value == m else 0.0)
        yield mode
        halted = GaugeMetricFamily("legguard_halted", "1 while halted, by who halted.", labels=["source"])
        for source in HaltSource:
            halted.add_metric([source.value], 1.0 if e.halt_source is source else 0.0)
        yield halted
        yield GaugeMetricFamily(
            "legguard_breaker_window_orphans", "Orphan events inside the breaker window.", value=e.breaker_count(now)
        )
        yield GaugeMetricFamily(
            "legguard_breaker_max_orphans", "The breaker trips above this many.", value=e.config.breaker.max_orphans
        )
        yield GaugeMetricFamily(
            "legguard_breaker_resume_in_seconds",
            "Until the breaker's automatic resume (-1: none scheduled).",
            value=-1.0 if e.resume_at is None else max(e.resume_at - now, 0.0),
        )
        yield GaugeMetricFamily(
            "legguard_venue_up", "1 unless the venue is in an outage.", value=0.0 if e.outage.down else 1.0
        )
        yield CounterMetricFamily(
            "legguard_stream_reconnects",
            "Order-stream drops (each followed by a reconnect).",
            value=e.stats.stream_drops,
        )
        if e.stream_last_message is not None:
            yield GaugeMetricFamily(
                "legguard_order_stream_message_age_seconds",
                "Since the last order-stream message.",
                value=now - e.stream_last_message,
            )
        books = GaugeMetricFamily("legguard_book_age_seconds", "Age of the latest L2 book.", labels=["symbol"])
        for symbol, book in sorted(e.books.items()):
            books.add_metric([symbol], max(now - book.timestamp, 0.0))
        yield books
        # How often the kill switch found its next move ready: a cancel written as the venue read the answer it
        # waited for, an unwind released as armed while the cancels travelled (or armed again because their
        # answers changed it), a step taken as decided ahead. A venue without a capability reports no sample.
        prepared = CounterMetricFamily(
            "legguard_kill_switch_prepared",
            "Kill-switch moves found prepared (cancel_on_answer, unwind_armed_ahead, unwind_rearmed, step_ahead).",
            labels=["move"],
        )
        for move, count in e.kill_switch_prepared().items():
            prepared.add_metric([move], float(count))
        yield prepared
        queried = getattr(e.venue, "fee_queries", None)
        if isinstance(queried, int):  # ccxt venues: fees asked of REST because no answer carried them
            yield CounterMetricFamily(
                "legguard_fee_queries",
                "REST trade queries made for an order's fees because neither its answer nor the order stream "
                "carried them in time.",
                value=queried,
            )
        guard = e.margin_guard
        if e.config.risk.margin_guard:
            yield GaugeMetricFamily(
                "legguard_margin_guard_failed_reads",
                "Reads of the perp account failed in a row (the margin guard is blind while > 0).",
                value=guard.failures,
            )
            if guard.last is not None:
                yield GaugeMetricFamily(
                    "legguard_margin_headroom", "The last perp margin headroom read.", value=float(guard.last.headroom)
                )
                yield GaugeMetricFamily(
                    "legguard_margin_read_age_seconds", "Since the margin guard's last good read.",
                    value=now - guard.last_at,
                )  # fmt: skip
        yield GaugeMetricFamily(
            "legguard_deadman_armed_symbols",
            "Perp symbols with the dead-man's switch armed.",
            value=len(e.deadman.armed),
        )
        yield GaugeMetricFamily("legguard_uptime_seconds", "Since the engine started.", value=now - e.started_at)
        if self.budget is not None:
            left = GaugeMetricFamily(
                "legguard_request_budget_remaining", "Request budget left (venue weight units).", labels=["market"]
            )
            for kind, units in sorted(self.budget().items()):
                left.add_metric([kind], units)
            yield left


# --- the HTTP endpoint ---------------------------------------------------------------------------------


class MetricsPortError(OSError):
    """The metrics endpoint cannot listen where it was told to."""


async def open_metrics_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Bind before anything else starts, so a busy port is one clear error, not a failure mid-run."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise MetricsPortError(f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def serve_metrics(
    metrics: EngineMetrics,
    listeners: list[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve GET /metrics (anything else: 404) on `listeners` until cancelled; reports the bound port."""
    host, bound = listeners[0].socket.getsockname()[:2]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    task_status.started(bound)
    await trio.serve_listeners(functools.partial(_respond, metrics), listeners)


async def _respond(metrics: EngineMetrics, stream: trio.abc.Stream) -> None:
    async with stream:
        head = b""
        with trio.move_on_after(5.0):
            while b"\r\n\r\n" not in head and len(head) < 8192:
                data = await stream.receive_some(4096)
                if not data:
                    return
                head += data
        parts = head.split(b" ", 2)
        if len(parts) < 2 or parts[0] != b"GET":
            status, body, ctype = b"405 Method Not Allowed", b"only GET\n", b"text/plain"
        elif parts[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
            status, body, ctype = b"404 Not Found", b"try /metrics\n", b"text/plain"
        else:
            started = time.perf_counter()
            body, status, ctype = metrics.exposition(), b"200 OK", CONTENT_TYPE_LATEST.encode()
            log.debug("metrics scrape in %.1f ms", (time.perf_counter() - started) * 1000)
        response = (
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: "
            + ctype
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        try:
            await stream.send_all(response)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
