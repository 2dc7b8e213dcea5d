"""Prometheus metrics, scraped over HTTP during a `run` on the simulated venue (virtual time) and parsed with
`prometheus_client.parser`: the documented names exist, follow the conventions, move while the engine
trades, and no label ever carries a package id."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from trio.testing import MockClock

from legguard.adapters._venue import Venue
from legguard.adapters.sim._venue import SimConfig, open_sim_venue
from legguard.engine import Engine, EngineConfig
from legguard.engine.app._config import parse_config
from legguard.engine.app._metrics import EngineMetrics
from legguard.engine.app._runner import RunOptions, RunStatus, run_engine
from legguard.engine.journal import Journal

CONFIG: dict[str, Any] = {
    "venue": {"kind": "sim", "seed": 7},
    "pairs": [{"spot": "ETH/USDT", "perp": "ETH/USDT:USDT", "quantity": "0.05"}],
    "engine": {"max_live_packages": 20},
    "breaker": {"max_orphans": 50},
}

DASHBOARD = Path(__file__).parents[3] / "docs" / "grafana-dashboard.json"

# Every name the dashboard and docs/operations.md rely on (families; counters without `_total`).
DOCUMENTED = {
    "legguard_packages", "legguard_live_packages", "legguard_transitions", "legguard_orphan_events",
    "legguard_kill_switch_reaction_seconds", "legguard_unwind_duration_seconds", "legguard_naked_exposure_seconds",
    "legguard_exposure_base", "legguard_venue_request_duration_seconds", "legguard_stream_reconnects",
    "legguard_book_age_seconds", "legguard_order_stream_message_age_seconds",
    "legguard_journal_commit_duration_seconds", "legguard_engine_mode", "legguard_halted",
    "legguard_breaker_window_orphans", "legguard_breaker_max_orphans", "legguard_breaker_resume_in_seconds",
    "legguard_venue_up", "legguard_halts", "legguard_resumes", "legguard_uptime_seconds",
    "legguard_kill_switch_prepared",
}  # fmt: skip


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> dict[str, list[Sample]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families: dict[str, list[Sample]], sample_name: str, **labels: str) -> float:
    for family in families.values():
        for s in family:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{sample_name} {labels}")


async def test_metrics_scraped_during_a_run_move(autojump_clock: MockClock, tmp_path: Path) -> None:
    status = RunStatus()
    config = parse_config(CONFIG)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_engine, config, tmp_path / "j.db", None, status, None, None, RunOptions(metrics_port=0))
        await status.ready.wait()
        assert status.metrics_port is not None
        # The first scrape once a package has been dispatched: under load, the metrics server's thread and the
        # autojump clock make "2 s in" mean anything from none to many dispatches (it failed once with none).
        with trio.fail_after(60):
            while True:
                await trio.sleep(0.5)
                code, first = await scrape(status.metrics_port)
                if any(
                    s.name == "legguard_transitions_total" and s.labels.get("to") == "dispatched"
                    for s in samples(first).get("legguard_transitions", [])
                ):
                    break
        await trio.sleep(20.0)
        _, second = await scrape(status.metrics_port)
        missing, _ = await scrape(status.metrics_port, "/nope")
        status.stop.set()

    assert code == 200 and missing == 404
    before, after = samples(first), samples(second)
    assert set(after) >= DOCUMENTED, DOCUMENTED - set(after)
    created_before = value(before, "legguard_transitions_total", trigger="dispatch", to="dispatched")
    created_after = value(after, "legguard_transitions_total", trigger="dispatch", to="dispatched")
    assert created_after > created_before > 0
    assert value(after, "legguard_engine_mode", mode="running") == 1.0
    assert value(after, "legguard_venue_up") == 1.0
    assert value(after, "legguard_packages", state="hedged") > 0
    assert value(after, "legguard_exposure_base", asset="ETH", measure="gross") > 0
    assert value(after, "legguard_venue_request_duration_seconds_count", endpoint="create_order") > 0
    assert value(after, "legguard_journal_commit_duration_seconds_count") > 0
    assert value(after, "legguard_margin_guard_failed_reads") == 0 and value(after, "legguard_margin_headroom") > 0
    # The sim venue writes no cancel on an answer (no such capability): that move is absent, not zero.
    moves = {s.labels["move"] for s in after["legguard_kill_switch_prepared"]}
    assert moves == {"unwind_armed_ahead", "unwind_rearmed", "step_ahead"}
    assert "legguard_fee_queries" not in after  # nor does it ever ask REST for fees
    # conventions: prefix, counters end in _total, no package id in any label
    for family in text_string_to_metric_families(second):
        assert family.name.startswith("legguard_"), family.name
        for s in family.samples:
            if family.type == "counter":
                assert s.name.endswith("_total"), s.name
            assert not any(re.fullmatch(r"P\d{6}", v) for v in s.labels.values()), s


def test_the_grafana_dashboard_uses_only_exported_names() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"legguard_[a-z_]+", e)}
    suffixes = ("_total", "_bucket", "_count", "_sum")
    families = {next((u[: -len(s)] for s in suffixes if u.endswith(s)), u) for u in used}
    assert exprs and families <= DOCUMENTED | {
        "legguard_venue_request_errors",
        "legguard_unwind_overdue",
        "legguard_alerts",
        "legguard_venue_outages",
        "legguard_request_budget_remaining",
        "legguard_deadman_armed_symbols",
        "legguard_margin_headroom",
        "legguard_margin_guard_failed_reads",
        "legguard_fee_queries",  # ccxt venues only: `test_a_ccxt_venues_counters_are_exported`
    }


class _CountingVenue:
    """The sim venue with the counters a ccxt venue keeps (`cancels_on_answer`, `fee_queries`)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.cancels_on_answer = 2
        self.fee_queries = 3

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_ccxt_venues_counters_are_exported(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_sim_venue(SimConfig(seed=3)) as sim:
        venue = _CountingVenue(sim)
        with Journal.open(tmp_path / "j.db") as journal:
            engine = Engine(cast(Venue, venue), journal, EngineConfig())
            async with engine.running(["ETH/USDT", "ETH/USDT:USDT"]):
                families = samples(EngineMetrics(engine).exposition().decode())
                venue.fee_queries = 4
                later = samples(EngineMetrics(engine).exposition().decode())
    assert value(families, "legguard_kill_switch_prepared_total", move="cancel_on_answer") == 2.0
    assert value(families, "legguard_kill_switch_prepared_total", move="unwind_armed_ahead") == 0.0
    assert value(families, "legguard_fee_queries_total") == 3.0 and value(later, "legguard_fee_queries_total") == 4.0
