"""`legguard bench` machinery on tiny sizes: that each measurement measures what it says (samples per mode,
stamps from both legs, rows really journaled, packages really live), and that results aggregate and render.
No timing assertions: the numbers themselves belong to `make bench`."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio

from legguard.adapters.emulator._server import serve_emulator
from legguard.cli._bench import BEGIN, END, _write_docs, markdown, rows
from legguard.engine.bench import _floors as f
from legguard.engine.bench import _harness as b
from legguard.engine.bench import _wire as bw
from legguard.engine.journal._store import Durability

# --- aggregation ----------------------------------------------------------------------------------------


def test_percentiles_interpolate_and_count() -> None:
    got = b.percentiles([float(x) for x in range(1, 101)])
    assert got == {"p50": 50.5, "p90": 90.1, "p99": 99.0, "n": 100}
    assert b.percentiles([7.0]) == {"p50": 7.0, "p90": 7.0, "p99": 7.0, "n": 1}
    assert math.isnan(b.percentiles([])["p50"])


def _run(skew_leg: float, reaction_p99: float, pps: float) -> dict[str, Any]:
    pct = {"p50": 1.0, "p90": 2.0, "p99": 3.0, "n": 3}
    run: dict[str, Any] = {
        "skew_us": {"sequential": {**pct, "p50": 300.0}, "gather": {**pct, "p50": 120.0},
                    "legguard": {**pct, "p50": skew_leg}},
        "reaction_us": {**pct, "p99": reaction_p99},
        "unwind_us": pct,
        "overhead_us": pct,
        "overhead_fire_us": {**pct, "p50": 4.0},
        "reaction_warmed_us": {**pct, "p50": 2.0},
        "overhead_warmed_us": {**pct, "p50": 3.0},
        "throughput": {"packages_per_s": pps, "steps_per_commit": 3.0, "commits": 30, "steps": 90, "packages": 10},
        "journal": {"process": {"single": 5000.0, "batched_100": 300000.0, "grouped": 120000.0, "group_size": 150.0,
                                "joined": 600000.0},
                    "power": {"single": 200.0, "batched_100": 9000.0, "grouped": 15000.0, "group_size": 150.0,
                              "joined": 600000.0}},
        "memory": {"bytes_per_package": 100.0},
        "finished_memory": {"bytes_per_finished_package": 80.0},
        "floors": {"send_us": {**pct, "p50": 5.0}, "commit_process_us": {**pct, "p50": 10.0},
                   "commit_power_us": {**pct, "p50": 1000.0}, "sign_us": {**pct, "p50": 30.0},
                   "hop_us": {**pct, "p50": 4.0}, "timer_us": {**pct, "p50": 2.0}, "task_us": {**pct, "p50": 3.0},
                   "dispatch_commit_us": {**pct, "p50": 10.0}, "send_cold_us": {**pct, "p50": 20.0},
                   "commit_process_cold_us": {**pct, "p50": 40.0}, "dispatch_commit_cold_us": {**pct, "p50": 80.0}},
    }  # fmt: skip
    run["overhead_trace"] = {"phases_p50": {k: float(i + 1) for i, (k, _) in enumerate(b.OVERHEAD_PHASES)},
                             "total_p50": 21.0, "n": 3, "incomplete": 0}  # fmt: skip
    run["throughput_profile"] = {"share_pct": {"trio (tasks, cancel scopes, timers, clock)": 40.0, "other": 60.0},
                                 "per_package": {"tasks": 5.0, "cancel_scopes": 15.0, "timers": 23.0,
                                                 "scheduler_rounds": 26.0},
                                 "timers_by_caller": {"sim venue": 10.0, "bench": 2.0, "engine": 1.5, "other": 0.0},
                                 "packages_per_s_profiled": 150.0}  # fmt: skip
    run["throughput"]["floor"] = b.throughput_floor(run["throughput"], run["floors"], run["throughput_profile"])
    return run


def test_throughput_floor_is_its_commits_timers_and_tasks_at_their_floors() -> None:
    throughput = {"commits": 30, "steps": 90, "packages": 10}
    floors = {"commit_process_us": {"p50": 10.0}, "timer_us": {"p50": 20.0}, "task_us": {"p50": 4.0}}
    machinery = {"per_package": {"tasks": 5.0}, "timers_by_caller": {"sim venue": 10.0, "bench": 2.0, "engine": 1.5}}
    # per package: 3 commits x 10 µs + 12 timers run to their deadline (the sim's and the bench's; the engine's
    # deadlines are left out) x 20 µs + 5 tasks x 4 µs = 290 µs
    assert b.throughput_floor(throughput, floors, machinery) == {
        "us_per_package": 290.0, "commits_per_package": 3.0, "steps_per_package": 9.0, "timers_per_package": 12.0,
        "tasks_per_package": 5.0, "packages_per_s": 3448.3
    }  # fmt: skip
    assert b.throughput_floor(throughput, {**floors, "timer_us": {"p50": math.nan}}, machinery) is None
    assert b.throughput_floor(throughput, {"commit_process_us": {"p50": 10.0}}, machinery) is None  # not measured
    assert b.throughput_floor(throughput, floors, None) is None  # no profile: nothing counted
    assert b.throughput_floor({**throughput, "packages": 0}, floors, machinery) is None


def test_a_profiles_timers_are_told_by_who_slept() -> None:
    trio_timeouts = "/x/site-packages/trio/_timeouts.py"
    stats: dict[tuple[str, int, str], tuple[Any, ...]] = {
        (trio_timeouts, 75, "sleep_until"): (0, 9, 0.0, 0.0, {
            (trio_timeouts, 95, "sleep"): (0, 5, 0.0, 0.0),  # sleep() calling sleep_until(): counted as sleep
            ("/w/src/legguard/adapters/sim/_venue.py", 300, "_deliver"): (0, 4, 0.0, 0.0),
        }),
        (trio_timeouts, 95, "sleep"): (0, 5, 0.0, 0.0, {
            ("/w/src/legguard/adapters/sim/_venue.py", 267, "_one_way"): (0, 2, 0.0, 0.0),
            ("/w/src/legguard/engine/bench/_harness.py", 297, "_throughput"): (0, 1, 0.0, 0.0),
            ("/w/src/legguard/engine/_actor.py", 730, "_leg_deadline"): (0, 1, 0.0, 0.0),
            ("/usr/lib/python3.11/asyncio/x.py", 1, "elsewhere"): (0, 1, 0.0, 0.0),
        }),
        ("/w/src/legguard/other.py", 1, "sleep"): (0, 7, 0.0, 0.0, {}),  # not trio's
    }  # fmt: skip
    assert b._timers_by_caller(stats) == {"sim venue": 6, "bench": 1, "engine": 1, "other": 1}


def test_summary_takes_medians_over_runs_and_checks_the_targets() -> None:
    runs = [_run(10.0, 500.0, 100.0), _run(30.0, 5000.0, 300.0), _run(20.0, 900.0, 200.0)]
    result = b.summarize(runs)
    assert result["skew_us"]["legguard"]["p50"] == 20.0
    assert result["skew_ratio"] == {"sequential_over_legguard": 15.0, "gather_over_legguard": 6.0}
    assert result["reaction_us"]["p99"] == 900.0 and result["packages_per_s"] == 200.0
    assert result["journal_events_per_s"] == 120000.0 and result["bytes_per_package"] == 100.0
    assert result["journal_power_events_per_s"] == 15000.0 and result["steps_per_commit"] == 3.0
    assert result["bytes_per_finished_package"] == 80.0 and result["floors"]["send_us"]["p50"] == 5.0
    # Each latency as a multiple of its floor: skew / send, reaction / send (its cancel journaled before the answer
    # came), overhead / commit.
    assert result["floor_multiple"]["skew_us"] == {"p50": 4.0, "p99": 1.0}
    assert result["floor_multiple"]["reaction_us"]["p50"] == round(1.0 / 5.0, 1)
    # overhead / one transaction of a dispatch's shape (no hop): 1 / 10, 3 / 3
    assert result["floor_multiple"]["overhead_us"] == {"p50": 0.1, "p99": 1.0}
    checks = b.target_checks(result)
    assert checks["skew_legguard_p50_us"]["met"] and checks["skew_gather_over_legguard"]["met"]
    assert checks["reaction_p99_us"]["met"] and checks["bytes_per_finished_package"]["met"]
    assert checks["packages_per_s"] == {"value": 200.0, "target": ">= 2000", "met": False, "off_by": "10.0x"}
    assert checks["journal_process_events_per_s"]["met"] and not checks["journal_power_events_per_s"]["met"]
    table = {r["measure"]: r for r in b.target_table(result)}
    assert len(table) == 9  # the rows, every one
    throughput = table["throughput, whole engine + journal (PROCESS), virtual time"]
    assert throughput["met"] == "missed (10.0x off)"
    # 3 commits x 10 + 12 timers x 2 + 5 tasks x 3 = 69 µs
    assert throughput["floor"] == (
        "69.0 µs per package (3 commits, 12 timers run to their deadline, 5 tasks) = 14,493 packages/s"
    )
    assert throughput["x_floor"] == "72.5x"  # 14,492.8 / 200
    # The grouped journal against its two halves measured alone: per row 1/600,000 + 1/300,000 s = 200,000/s.
    journal = table["journal, durable events/s (PROCESS)"]
    assert journal["floor"] == (
        "bare commit 10.0 µs = 100,000 commits/s; grouped, its parts alone: 600,000 joins/s (trio, nothing "
        "written) + 300,000 rows/s (batches of 100, no task) = 200,000/s"
    )
    assert journal["x_floor"] == "20.0x (one transaction each); grouped 1.67x its parts"  # 200,000 / 120,000
    reaction = table["kill switch: decisive answer in → cancel out, p50 / p99"]
    assert reaction["met"] == "met" and reaction["floor"].startswith("5.0 / 3.0 µs (send)")
    # The same floors after a wait asleep: reaction / cold send, overhead / cold commit.
    assert reaction["floor"].endswith("; after 2 ms asleep: 20.0 µs")
    assert result["cold_floor_multiple"]["reaction_us"] == {"p50": round(1.0 / 20.0, 1)}
    assert result["cold_floor_multiple"]["overhead_us"] == {"p50": round(1.0 / 80.0, 1)}
    # The overhead's floor: one transaction of a dispatch's shape on the journal's schema (the SQL alone).
    assert table["engine overhead: signal → both legs at the venue, p50"]["floor"] == (
        "10.0 / 3.0 µs (dispatch commit); after 2 ms asleep: 80.0 µs"
    )
    assert table["engine overhead: signal → both legs at the venue, p50"]["x_floor"] == (
        "0.1x (p50 0x the floor after a wait)"
    )


def test_docs_section_is_rewritten_between_the_markers_only(tmp_path: Path) -> None:
    sizes = {"runs": 1, "pairs": 2, "reactions": 1, "packages": 3, "memory_packages": 4}
    result = {**b.summarize([_run(20.0, 900.0, 200.0)]), "machine": b.machine(), "date": "2026-01-01 00:00 UTC",
              "sizes": sizes, "seconds": 1.0}  # fmt: skip
    result["targets"] = b.target_checks(result)
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\nprose before\n\n{BEGIN}\nold table\n{END}\n\nprose after\n")
    _write_docs(doc, result)
    text = doc.read_text()
    assert "old table" not in text and "prose before" in text and "prose after" in text
    assert markdown(result) in text and text.count(BEGIN) == 1
    # 11 floors, 3 skew modes, reaction and unwind, overhead, each latency again kept warm, throughput,
    # 2 journal durabilities, 2 memory figures; the overhead's path phase by phase and throughput's profile
    assert len(rows(result)) == 26 and "missed (10.0x off)" in text
    assert "| floor: trio timer (µs) | 2.0 |" in text and "| floor: trio task (µs) | 3.0 |" in text
    assert "its timers by who slept: sim venue 10.0, bench 2.0, engine 1.5, other 0.0 (first run only" in text
    assert (
        "| engine overhead, its path stamped (µs) | 21.0 |  |  | p50 per phase, in order: validate, price, plan 1.0; "
        "creation row, core, handle, actor 2.0; decision and its rows 3.0; write-ahead commit 4.0;" in text
    )
    assert "trio (tasks, cancel scopes, timers, clock) 40.0 %; other 60.0 %; per package 5.0 tasks" in text
    assert "| kill switch: answer in → cancel out, kept warm (µs) | 2.0 |" in text
    assert "| engine overhead, kept warm (µs) | 3.0 |" in text
    assert "| memory kept per finished package | 80.0 B | < 0.5 KB | met |" in text
    # The overhead's earlier endpoint (the second leg's `fire` entered) is kept beside the new one.
    assert result["overhead_fire_us"]["p50"] == 4.0 and "to fire entered: 4.0 µs (p50)" in text


# --- local measurements ---------------------------------------------------------------------------------


def test_journal_rates_come_from_rows_really_written(tmp_path: Path) -> None:
    for durability in Durability:
        rates = b.journal_run(200, tmp_path, durability, actors=50)
        assert rates["single"] > 0 and rates["batched_100"] > 0 and rates["grouped"] > 0 and rates["joined"] > 0
        assert rates["group_size"] > 1  # the actors' steps really shared transactions
        with sqlite3.connect(tmp_path / f"journal-{durability.value}.db") as conn:
            written = conn.execute("SELECT count(*) FROM journal WHERE kind = 'ack'").fetchone()[0]
        # one each and batched: POWER runs max(rows // 20, 100); grouped: 50 actors x 4 steps in both
        assert written == (400 if durability is Durability.PROCESS else 200) + 200


def test_throughput_counts_packages_through_the_whole_engine(tmp_path: Path) -> None:
    got = b.throughput_run(8, tmp_path, live=4)
    assert got["dispatched"] == 8 and sum(got["final_states"].values()) == 8
    assert set(got["final_states"]) <= {"hedged", "flat"} and got["packages_per_s"] > 0
    assert got["journal_rows"] > 8 * 5  # created, dispatched, acks, fills or cancels: the journal was on
    assert got["packages"] == 8 and got["steps"] >= got["commits"] >= 8  # each package's dispatch at least


def test_overhead_samples_one_per_package(tmp_path: Path) -> None:
    to_fire: list[float] = []
    samples = trio.run(
        partial(b.overhead_run, to_fire=to_fire), 3, tmp_path, 1, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    assert len(samples) == 3 and all(s > 0 for s in samples)
    # Taken by the venue's `release` before the send task enters `fire`, sample for sample.
    assert len(to_fire) == 3 and all(t > s for s, t in zip(samples, to_fire, strict=True))


def test_the_overhead_trace_stamps_every_phase_of_each_package(tmp_path: Path) -> None:
    got = trio.run(partial(b.overhead_trace_run, 4, tmp_path, 1), clock=trio.testing.MockClock(autojump_threshold=0))
    assert got["n"] + got["incomplete"] == 4 and got["n"] >= 3
    phases = got["phases_p50"]
    assert list(phases) == [k for k, _ in b.OVERHEAD_PHASES] and all(v >= 0 for v in phases.values())
    assert phases["committed"] > 0  # a real SQLite commit between the decision and the release
    # The stamps are back out: a later run is not traced.
    from legguard.engine._actor import PackageActor
    from legguard.engine._group import GroupCommit

    assert PackageActor.step_now.__name__ == "step_now" and GroupCommit.commit_now.__name__ == "commit_now"


def test_the_throughput_profile_shares_out_the_cpu_and_counts_trio_machinery(tmp_path: Path) -> None:
    got = b.throughput_profile_run(6, tmp_path, live=3)
    assert sum(got["share_pct"].values()) == pytest.approx(100.0, abs=0.5)
    assert all(got["share_pct"][area] > 0 for area, _ in b.THROUGHPUT_AREAS)  # every area really ran
    per = got["per_package"]
    assert per["tasks"] >= 1 and per["cancel_scopes"] >= 1 and per["timers"] >= 1 and per["scheduler_rounds"] >= 1
    # Every timer is told by who slept, and the sim venue's latency model slept for every package.
    by = got["timers_by_caller"]
    assert sum(by.values()) == pytest.approx(per["timers"], abs=0.1) and by["sim venue"] >= 1


def test_finished_memory_runs_packages_to_flat_and_releases_them(tmp_path: Path) -> None:
    got = b.finished_memory_run(6, tmp_path, warmup=4)
    assert got["held_in_memory"] == 0 and got["retired"] == 10  # 4 to warm up, 6 measured: all flat, released
    assert isinstance(got["bytes_per_finished_package"], float) and got["recent_window"]["packages"] >= 0


def test_floors_are_measured_from_real_sends_commits_signs_and_hops(tmp_path: Path) -> None:
    got = f.floors_run(5, tmp_path, b.percentiles)
    assert {name: p["n"] for name, p in got.items()} == {
        "send_us": 5, "commit_process_us": 5, "commit_power_us": 20, "sign_us": 5, "hop_us": 5, "timer_us": 5,
        "task_us": 1, "dispatch_commit_us": 5, "send_cold_us": 50, "commit_process_cold_us": 50,
        "dispatch_commit_cold_us": 50}  # fmt: skip
    assert set(got) == set(f.FLOOR_NAMES)
    assert all(p["p50"] > 0 for p in got.values())
    for name, rows_expected in (("floor-process.db", 6), ("floor-power.db", 21), ("floor-cold.db", 51)):
        with sqlite3.connect(tmp_path / name) as conn:  # each sample committed one row (plus the first)
            rows = conn.execute("SELECT count(*) FROM floor").fetchone()[0]
            assert rows == rows_expected
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # A dispatch's write-ahead, on a real journal's schema: five rows, the package's view and the head per sample.
    for name, samples in (("floor-dispatch.db", 5), ("floor-dispatch-cold.db", 50)):
        with sqlite3.connect(tmp_path / name) as conn:
            rows = conn.execute("SELECT count(*) FROM journal WHERE package_id LIKE 'F%'").fetchone()[0]
            assert rows == samples * f.DISPATCH_ROWS
            assert conn.execute("SELECT count(*) FROM packages").fetchone()[0] == samples
            head = conn.execute("SELECT value FROM meta WHERE key = 'head'").fetchone()[0]
            last = conn.execute("SELECT max(seq) FROM journal").fetchone()[0]
            assert head.startswith(f"{last}:")


def test_memory_holds_every_package_live(tmp_path: Path) -> None:
    got = b.memory_run(20, tmp_path)
    assert got["live"] == 70  # 50 to warm up, 20 measured: all dispatched, legs resting
    assert got["bytes_per_package"] > 0 and "legguard.engine" in got["by_area_per_package"]


# --- the wire: skew and kill switch against an in-process emulator ----------------------------------------


@asynccontextmanager
async def in_process_rig(tmp_path: Path) -> AsyncIterator[bw.WireRig]:
    async with trio_asyncio.open_loop():
        served = serve_emulator(tls_port=None, autoclock=False, seed=11)
        async with (
            trio_asyncio.aio_as_trio(served) as emu,
            bw.wire_rig(f"http://127.0.0.1:{emu.port}", tmp_path) as rig,
        ):
            yield rig


async def test_skew_samples_every_mode_from_socket_stamps(tmp_path: Path) -> None:
    async with in_process_rig(tmp_path) as rig:
        skew = await bw.measure_skew(rig, 2, warmup=0)
        assert {m: len(xs) for m, xs in skew.items()} == {"sequential": 2, "gather": 2, "legguard": 2}
        assert all(x > 0 for xs in skew.values() for x in xs)
        # Every legguard leg's bytes were stamped at the socket, spot and perp alike.
        entry = {k for k in rig.stamps.sends if k.endswith(("-SE0", "-PE0")) and not k.startswith("cancel:")}
        assert len(entry) == 4


async def test_reaction_follows_the_scripted_kill_switch(tmp_path: Path) -> None:
    async with in_process_rig(tmp_path) as rig:
        got = await bw.measure_reaction(rig, 2, warmup=0)
        # A package decided on the stream's report, read before the REST acknowledgement, is counted apart.
        assert got.skipped == 0 and len(got.reaction_us) + got.stream_decided == 2 and len(got.unwind_us) == 2
        assert all(x > 0 for x in got.reaction_us + got.unwind_us), (got.reaction_us, got.unwind_us)


def test_the_wire_bench_starts_its_emulator_process() -> None:
    # The child is started by module name: after a move that name must still be importable (it was not once).
    with bw.emulator_process() as base:
        assert base.startswith("http://127.0.0.1:")
