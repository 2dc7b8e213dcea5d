"""`legguard bench`: the performance numbers of this machine, measured side by side in one run — inter-leg
skew and kill-switch reaction at the socket (`_bench_wire`), engine overhead, throughput with the journal
on, journal appends, memory per live package — with medians over repeated runs, and the results table of
`docs/performance.md`.

Every number is measured through the engine's own path: the bench only adds time stamps (a venue wrapper
that notes when `fire` is entered, the venue's socket tap, a count of settled packages). What traces a
measure (the overhead's phase stamps, the throughput run's profile) runs separately, never inside a
measured run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import itertools
import os
import platform
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio
import trio.lowlevel
import trio.testing

from legguard.adapters._venue import ArmedOrder, Venue
from legguard.adapters.sim._venue import SimConfig, open_sim_venue
from legguard.domain import OrderUpdate
from legguard.engine._engine import Engine
from legguard.engine._group import GroupCommit
from legguard.engine._handle import PackageHandle
from legguard.engine._spec import BreakerConfig, Deadlines, EngineConfig, PackageSpec
from legguard.engine.journal import Durability, Journal
from legguard.fsm import State, Transitioned

from ._floors import COLD_GAP, FLOOR_NAMES, FLOOR_OF, floor_value, floors_run

SPOT, PERP = "BTC/USDT", "BTC/USDT:USDT"
QTY = Decimal("0.01")
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Sizes:
    runs: int
    pairs: int  # skew samples per mode and run
    reactions: int  # kill-switch samples per run
    overhead: int  # engine-overhead samples per run
    packages: int  # throughput run
    journal_rows: int  # per durability mode
    memory_packages: int
    finished_packages: int = 1_000  # run to flat, for the memory a finished package keeps
    floor_samples: int = 2_000  # per floor (POWER commits: a tenth)


FULL = Sizes(runs=3, pairs=280, reactions=60, overhead=300, packages=1500, journal_rows=20_000, memory_packages=3_000)
QUICK = Sizes(runs=1, pairs=40, reactions=10, overhead=40, packages=150, journal_rows=2_000, memory_packages=300,
              finished_packages=150, floor_samples=300)  # fmt: skip

# The targets (issue 16), one per measured value: (op, target). `target_table` groups them into the
# issue's rows, each with the floor that bounds it measured in the same run.
TARGETS: Mapping[str, tuple[str, float]] = {
    "skew_legguard_p50_us": ("<=", 25.0),
    "skew_gather_over_legguard": (">=", 4.0),
    "reaction_p50_us": ("<=", 250.0),
    "reaction_p99_us": ("<=", 1000.0),
    "unwind_p50_us": ("<=", 500.0),
    "unwind_p99_us": ("<=", 2000.0),
    "overhead_p50_us": ("<=", 250.0),
    "packages_per_s": (">=", 2000.0),
    "journal_process_events_per_s": (">=", 100_000.0),
    "journal_power_events_per_s": (">=", 20_000.0),
    "bytes_per_live_package": ("<=", 8192.0),
    "bytes_per_finished_package": ("<", 512.0),
}


def percentiles(xs: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 (linear interpolation) and the sample count."""
    if not xs:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "n": 0}
    s = sorted(xs)

    def q(p: float) -> float:
        k = (len(s) - 1) * p
        lo = int(k)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {"p50": round(q(0.5), 1), "p90": round(q(0.9), 1), "p99": round(q(0.99), 1), "n": len(s)}


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


# --- 3. engine overhead: signal -> both legs handed to the venue ------------------------------------------


class _Stamping:
    """The sim venue, unchanged, with the moment it takes each order in `release` noted (perf_counter_ns, right
    after its `release` returns: the analogue of the ccxt venue's `send()`, which the skew's tap stamps), the
    moment each `fire` is entered too, and an event set when both legs of the package being watched have been
    fired: the bench waits on that alone, so that no task of its own runs inside the window it measures
    (`PackageHandle.wait_until` starts two tasks per step)."""

    def __init__(self, inner: Any, *, traced: bool = False) -> None:
        self._inner = inner
        self.taken: dict[str, int] = {}
        self.fired: dict[str, int] = {}
        self._watch: tuple[str, trio.Event] | None = None
        self._traced = traced

    def release(self, armed: Sequence[ArmedOrder]) -> None:
        if self._traced:
            _MARKS.setdefault("armed", time.perf_counter_ns())
        self._inner.release(armed)
        now = time.perf_counter_ns()
        for a in armed:
            self.taken[a.request.client_order_id] = now

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def watch(self, prefix: str) -> trio.Event:
        """An event set once two orders whose client ids start with `prefix` (one package's) were fired."""
        self._watch = (prefix, trio.Event())
        return self._watch[1]

    async def fire(self, armed: ArmedOrder) -> OrderUpdate:
        cid = armed.request.client_order_id
        self.fired[cid] = time.perf_counter_ns()
        if self._watch is not None and cid.startswith(self._watch[0]):
            prefix, both = self._watch
            if sum(1 for c in self.fired if c.startswith(prefix)) >= 2:
                self._watch = None
                both.set()
        result: OrderUpdate = await self._inner.fire(armed)
        return result


def _config(**changes: Any) -> EngineConfig:
    base = dataclasses.replace(
        EngineConfig(), max_live_packages=1_000_000, breaker=BreakerConfig(max_orphans=1_000_000)
    )
    return dataclasses.replace(base, **changes)


def _spec() -> PackageSpec:
    # Any spread: the bench wants every package dispatched, never refused by pricing.
    return PackageSpec(SPOT, PERP, QTY, min_spread=Decimal(-1))


# The overhead's path, cut where `overhead_trace_run` stamps it: (key, what runs before that stamp).
OVERHEAD_PHASES: tuple[tuple[str, str], ...] = (
    ("created", "validate, price, plan"),
    ("actor", "creation row, core, handle, actor"),
    ("decided", "decision and its rows"),
    ("committed", "write-ahead commit"),
    ("armed", "core swapped in, legs armed"),
    ("released", "both legs released"),
)
_MARKS: dict[str, int] = {}  # perf_counter_ns per phase of the package being traced (first stamp only)


def _marking(name: str, method: Callable[..., Any], *, after: str | None = None) -> Callable[..., Any]:
    def marked(*args: Any, **kwargs: Any) -> Any:
        _MARKS.setdefault(name, time.perf_counter_ns())
        result = method(*args, **kwargs)
        if after is not None:
            _MARKS.setdefault(after, time.perf_counter_ns())
        return result

    return marked


@contextlib.contextmanager
def _phase_marks() -> Iterator[None]:
    """Stamp the entry (and the commit's exit) of each phase of `Engine.submit`'s path while inside."""
    from legguard.engine._actor import PackageActor

    patched = ((Journal, "defer_created", "created", None), (PackageActor, "step_now", "actor", None),
               (GroupCommit, "commit_now", "decided", "committed"))  # fmt: skip
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _, _ in patched]
    try:
        for owner, name, mark, after in patched:
            setattr(owner, name, _marking(mark, owner.__dict__[name], after=after))
        yield
    finally:
        for owner, name, method in saved:
            setattr(owner, name, method)


async def overhead_trace_run(samples: int, directory: Path, warmup: int = 20) -> dict[str, Any]:
    """`overhead_run` again, with the path stamped at each phase's start (`OVERHEAD_PHASES`): µs p50 per
    phase, and of the whole path as stamped (the stamps' wrappers cost a little: it is a run of its own,
    never the measure). Samples missing a stamp (a dispatch the actor took instead) are counted, not used."""
    trace: list[dict[str, int]] = []
    with _phase_marks():
        await overhead_run(samples, directory, warmup, keep_warm=None, trace=trace)
    keys = ["start", *(k for k, _ in OVERHEAD_PHASES)]
    whole = [t for t in trace if all(k in t for k in keys)]
    phases = {
        key: round(statistics.median((t[key] - t[before]) / 1000 for t in whole), 1) if whole else float("nan")
        for before, key in itertools.pairwise(keys)
    }
    total = round(statistics.median((t["released"] - t["start"]) / 1000 for t in whole), 1) if whole else float("nan")
    return {"phases_p50": phases, "total_p50": total, "n": len(whole), "incomplete": len(trace) - len(whole)}


async def overhead_run(
    samples: int,
    directory: Path,
    warmup: int = 20,
    *,
    to_fire: list[float] | None = None,
    keep_warm: float | None = EngineConfig().keep_warm,
    trace: list[dict[str, int]] | None = None,
) -> list[float]:
    """µs from `Engine.submit` (the signal) to the sim venue taking the second leg in `release` (both legs at
    the venue), on the real clock, the sim venue at zero latency, the journal on (PROCESS). `to_fire` gets the
    earlier endpoint, the second leg's `fire` entered (its send task running), sample for sample. `trace`
    gets each sample's phase stamps (perf_counter_ns; `overhead_trace_run`)."""
    out: list[float] = []
    journal = Journal.open(directory / f"overhead-{keep_warm}-{trace is not None}.db", Durability.PROCESS)
    try:
        async with open_sim_venue(SimConfig(seed=3, latency_ms=0, jitter_ms=0)) as sim:
            venue = _Stamping(sim, traced=trace is not None)
            config = _config(deadlines=Deadlines(fill=0.005), keep_warm=keep_warm)
            engine = Engine(cast(Venue, venue), journal, config)
            async with engine.running([SPOT, PERP]):
                for i in range(warmup + samples):
                    _MARKS.clear()
                    t0 = time.perf_counter_ns()
                    package_id = engine.submit(_spec())
                    handle = engine.handles[package_id]
                    both = venue.watch(f"{handle.core.plan.client_id_prefix}-")
                    with trio.fail_after(5):
                        await both.wait()
                    if i >= warmup:
                        out.append((max(venue.taken[c] for c in handle.core.orders) - t0) / 1000)
                        if to_fire is not None:
                            to_fire.append((max(venue.fired[c] for c in handle.core.orders) - t0) / 1000)
                        if trace is not None:
                            released = max(venue.taken[c] for c in handle.core.orders)
                            trace.append({**_MARKS, "start": t0, "released": released})
                    with trio.fail_after(10):  # hedged (both legs filled) or flat (cancelled at the deadline)
                        await handle.wait_until(lambda core: core.state in (State.HEDGED, State.FLAT))
    finally:
        journal.close()
    return out


# --- 4. throughput in virtual time, journal on ----------------------------------------------------------


class _Counting(Engine):
    """The engine, counting packages that reached hedged or flat (a transition the engine reports)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settled: set[str] = set()
        self.dispatched = 0

    def on_transition(self, handle: PackageHandle, t: Transitioned, now: float) -> None:
        super().on_transition(handle, t, now)
        if t.source is State.PENDING and t.dest is State.DISPATCHED:
            self.dispatched += 1
        if t.dest in (State.HEDGED, State.FLAT):
            self.settled.add(handle.package_id)


async def _throughput(packages: int, directory: Path, live: int) -> dict[str, Any]:
    journal = Journal.open(directory / "throughput.db", Durability.PROCESS)
    try:
        async with open_sim_venue(SimConfig(seed=7)) as sim:
            engine = _Counting(sim, journal, _config())
            async with engine.running([SPOT, PERP]):
                await trio.sleep(0.5)  # a few market ticks: books and prints
                start, submitted = time.perf_counter(), 0
                while len(engine.settled) < packages:
                    while submitted < packages and submitted - len(engine.settled) < live:
                        engine.submit(_spec())
                        submitted += 1
                    await trio.sleep(0.01)
                wall = time.perf_counter() - start
                states = engine.final_states()
            rows = journal.head[0]
    finally:
        journal.close()
    return {
        "packages_per_s": round(packages / wall, 1),
        "wall_s": round(wall, 3),
        "dispatched": engine.dispatched,
        "final_states": dict(sorted(states.items())),
        "journal_rows": rows,
        # How the engine grouped its actors' steps under this load (mean steps per transaction).
        "steps_per_commit": round(engine.group.members / engine.group.groups, 2) if engine.group.groups else 0.0,
        "commits": engine.group.groups,
        "steps": engine.group.members,  # steps journaled (each in one of the commits)
        "packages": packages,
    }


def throughput_floor(
    throughput: Mapping[str, Any], floors: Mapping[str, Any], machinery: Mapping[str, Any] | None
) -> dict[str, float] | None:
    """What bounds throughput on this machine, from the same bench: per package, the journal commits the engine
    took for it (`throughput`), and the trio tasks and timers the run used for it (`machinery`: the profiled
    run's `per_package` tasks and `timers_by_caller`), each at its floor (a bare PROCESS commit; a task spawned,
    run and exited; a sleep run to its deadline under the run's clock). µs per package, and the packages/s
    that alone would allow. Only the timers that always run to their deadline count: the sim venue's (its
    latency model: each one-way trip of a request or an answer, each stream delivery, the market's ticks) and
    the bench's own poll; the engine's deadlines (most cancelled before they expire, a cheaper path) and the
    steps' own wakes (each after a timer or a scheduler hop) are left out, so this stays a floor."""
    prices = [floors[k].get("p50") if isinstance(floors.get(k), Mapping) else None
              for k in ("commit_process_us", "timer_us", "task_us")]  # fmt: skip
    packages = throughput.get("packages")
    by_caller = machinery.get("timers_by_caller") if machinery else None
    tasks = machinery.get("per_package", {}).get("tasks") if machinery else None
    numbers = [float(p) for p in prices if isinstance(p, int | float) and p == p]
    if not (packages and by_caller and isinstance(tasks, int | float) and len(numbers) == len(prices)):
        return None
    commit, timer, task = numbers
    timers = sum(by_caller.get(k, 0.0) for k in ("sim venue", "bench"))
    commits = throughput["commits"] / packages
    us = commits * commit + timers * timer + tasks * task
    return {
        "us_per_package": round(us, 1),
        "commits_per_package": round(commits, 2),
        "steps_per_package": round(throughput["steps"] / packages, 2),
        "timers_per_package": round(timers, 2),
        "tasks_per_package": round(tasks, 2),
        "packages_per_s": round(1e6 / us, 1) if us else float("inf"),
    }


def throughput_run(packages: int, directory: Path, live: int = 200) -> dict[str, Any]:
    """Packages per wall second through the whole engine (actors, core, journal PROCESS, sim venue with its
    latency and market), time virtual (MockClock, autojump): the wall time is all CPU."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    result: dict[str, Any] = trio.run(_throughput, packages, directory, live, clock=clock)
    return result


# Where a throughput run's CPU goes, by the code it runs in (`throughput_profile_run`): (area, path fragments
# of the profiled functions' files; C functions go by name). The first area that matches takes a function.
THROUGHPUT_AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("trio (tasks, cancel scopes, timers, clock)", ("/trio/", "/outcome/", "/contextlib.py", "/sniffio/",
                                                    "methods trio.", "methods outcome.", "select.epoll",
                                                    "_contextvars.Context", "_heapq")),
    ("SQLite (C)", ("<method 'execute' of 'sqlite3", "<method 'executemany' of 'sqlite3", "sqlite3")),
    ("journal (rows, chain, group commit)", ("legguard/engine/journal/", "legguard/engine/_group.py",
                                             "_hashlib", "_json", "json/")),
    ("decision core (fsm, transitions)", ("legguard/fsm/", "/transitions/")),
    ("sim venue and market model", ("legguard/adapters/",)),
    ("actors and engine", ("legguard/engine/", "legguard/domain")),
)  # fmt: skip


_TRIO_COUNTED: dict[tuple[str, str], str] = {
    ("_run.py", "spawn_impl"): "tasks",
    ("<attrs generated methods trio._core._run.CancelStatus>", "__init__"): "cancel_scopes",
    ("_timeouts.py", "sleep_until"): "timers",
    ("_run.py", "unrolled_run"): "scheduler_rounds",
}


def throughput_profile_run(packages: int, directory: Path, live: int = 200) -> dict[str, Any]:
    """`throughput_run` under cProfile (a run of its own: the profiler roughly halves the rate): each area's
    share of the CPU (`THROUGHPUT_AREAS`, self time, %), and the trio machinery per package (tasks spawned,
    cancel scopes entered, timers slept, scheduler rounds)."""
    import cProfile
    import pstats

    (directory / "profiled").mkdir(exist_ok=True)
    profile = cProfile.Profile()
    profile.enable()
    try:
        result = throughput_run(packages, directory / "profiled", live)
    finally:
        profile.disable()
    stats = cast("dict[tuple[str, int, str], tuple[int, int, float, float, Any]]", pstats.Stats(profile).stats)  # type: ignore[attr-defined]
    areas = dict.fromkeys([a for a, _ in THROUGHPUT_AREAS] + ["other (Python, stdlib)"], 0.0)
    # trio's machinery, counted by the functions every such thing passes through once: a task's spawn, a
    # cancel scope's status object, a sleep, and a resumption of the run loop's generator (one per round).
    counts = dict.fromkeys(("tasks", "cancel_scopes", "timers", "scheduler_rounds"), 0)
    total = 0.0
    for (file, _line, name), (_, calls, own, _, _) in stats.items():
        total += own
        where = f"{file}:{name}" if file != "~" else name
        area = next((a for a, parts in THROUGHPUT_AREAS if any(p in where for p in parts)), "other (Python, stdlib)")
        areas[area] += own
        counted = _TRIO_COUNTED.get((file.rsplit("/", 2)[-1] if "/trio/" in file else file, name))
        if counted is not None:
            counts[counted] += calls
    done = max(result["packages"], 1)
    return {
        "share_pct": {a: round(100 * t / total, 1) for a, t in areas.items()} if total else {},
        "per_package": {k: round(n / done, 1) for k, n in counts.items()},
        "timers_by_caller": {k: round(n / done, 2) for k, n in _timers_by_caller(stats).items()},
        "packages_per_s_profiled": result["packages_per_s"],
    }


# Who slept, by the file of the code that called `trio.sleep` / `trio.sleep_until` (the first that matches).
TIMER_CALLERS: tuple[tuple[str, str], ...] = (
    ("sim venue", "legguard/adapters/"),
    ("bench", "legguard/engine/bench/"),
    ("engine", "legguard/"),
)


def _timers_by_caller(stats: Mapping[tuple[str, int, str], tuple[Any, ...]]) -> dict[str, int]:
    """Trio sleeps of a profiled run by who slept (`TIMER_CALLERS`, else "other"): the callers of trio's
    `sleep` and `sleep_until`, leaving out `sleep` calling `sleep_until` (one timer, counted once)."""
    out = dict.fromkeys([name for name, _ in TIMER_CALLERS] + ["other"], 0)
    for (file, _line, name), entry in stats.items():
        if name not in ("sleep", "sleep_until") or not file.endswith("trio/_timeouts.py"):
            continue
        callers: Mapping[tuple[str, int, str], tuple[Any, ...]] = entry[4]
        for (caller, _, _), (_, calls, *_) in callers.items():
            if caller.endswith("trio/_timeouts.py"):
                continue
            who = next((n for n, part in TIMER_CALLERS if part in caller), "other")
            out[who] += calls
    return out


# --- journal appends ------------------------------------------------------------------------------------


def journal_run(rows: int, directory: Path, durability: Durability, actors: int = 200) -> dict[str, float]:
    """Appends per second: `single`, one transaction each (`record()`, how the engine writes a fact outside
    a core step); `batched_100`, one `batch()` of 100 rows; `grouped`, as the engine commits its actors'
    steps: `actors` trio tasks (the throughput bench's live packages), each appending its step's row through
    the engine's `GroupCommit`, so every scheduler round commits once (`group_size`: mean steps per commit).
    POWER fsyncs every commit: its one-transaction-each figure gets a twentieth of the rows, or it would
    dominate the bench's run time. Each timed phase starts from a collected heap: the garbage the earlier
    measures left (the engine's packages) would otherwise fall due as one full collection of the whole heap
    (~100 ms) inside whichever phase happens to be running, a 2,000-row phase measuring mostly that. The
    phases' own allocations are collected as usual, inside the timing."""
    out: dict[str, float] = {}
    single = max(rows // 20, 100) if durability is Durability.POWER else rows
    payload = {"client_order_id": "lgab12000001-SE0", "status": "open", "filled": "0", "average": None}
    with Journal.open(directory / f"journal-{durability.value}.db", durability) as journal:
        gc.collect()
        start = time.perf_counter()
        for i in range(single):
            journal.record("ack", None, payload, float(i))
        out["single"] = round(single / (time.perf_counter() - start), 1)
        gc.collect()
        start = time.perf_counter()
        for i in range(0, single, 100):
            with journal.batch():
                for k in range(100):
                    journal.record("ack", None, payload, float(i + k))
        out["batched_100"] = round(single // 100 * 100 / (time.perf_counter() - start), 1)
        group = GroupCommit(journal)
        each = max(rows // actors, 1)

        async def actor(n: int) -> None:
            for i in range(each):
                await group.commit([journal.prepare_fact("ack", None, payload, float(n * each + i))])

        async def grouped() -> None:
            async with trio.open_nursery() as nursery:
                for n in range(actors):
                    nursery.start_soon(actor, n)

        gc.collect()
        start = time.perf_counter()
        trio.run(grouped)
        out["grouped"] = round(actors * each / (time.perf_counter() - start), 1)
        out["group_size"] = round(group.members / group.groups, 1) if group.groups else 0.0
    out["joined"] = joined_run(actors * each, actors)
    return out


class _NoJournal:
    """What `GroupCommit` asks of a journal, with nothing written: its commit takes the group's writes and
    drops them (they are never run)."""

    journal_id = "none"
    in_batch = False

    def commit(self, writes: Sequence[Callable[[], None]], *, urgent: bool = False) -> None:
        pass


def joined_run(rows: int, actors: int = 200) -> float:
    """Steps/s of the journal bench's grouped phase with the journal taken out: `actors` trio tasks, each
    joining the engine's `GroupCommit` `rows // actors` times, whose commit writes nothing. What a grouped
    append costs before its row is encoded, chained and written: the trio half of `grouped` (the other half,
    the rows without any task, is `batched_100`)."""
    group = GroupCommit(cast(Journal, _NoJournal()))
    each = max(rows // actors, 1)
    nothing: list[Callable[[], None]] = [lambda: None]

    async def actor() -> None:
        for _ in range(each):
            await group.commit(nothing)

    async def joined() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(actors):
                nursery.start_soon(actor)

    gc.collect()
    start = time.perf_counter()
    trio.run(joined)
    return round(actors * each / (time.perf_counter() - start), 1)


# --- 5. memory per live package -------------------------------------------------------------------------


async def _memory(packages: int, directory: Path) -> dict[str, Any]:
    journal = Journal.open(directory / "memory.db", Durability.PROCESS)
    try:
        async with open_sim_venue(SimConfig(seed=11, latency_ms=0, jitter_ms=0)) as sim:
            engine = Engine(sim, journal, _config())
            async with engine.running([SPOT, PERP]):
                # Virtual time stands still (no autojump): acknowledged legs rest, every package stays live.
                for _ in range(50):
                    engine.submit(_spec())
                await trio.testing.wait_all_tasks_blocked()
                gc.collect()
                before = tracemalloc.take_snapshot()
                base = tracemalloc.get_traced_memory()[0]
                for i in range(packages):
                    engine.submit(_spec())
                    if i % 100 == 99:
                        await trio.testing.wait_all_tasks_blocked()
                await trio.testing.wait_all_tasks_blocked()
                gc.collect()
                used = tracemalloc.get_traced_memory()[0] - base
                after = tracemalloc.take_snapshot()
                live = sum(1 for h in engine.handles.values() if h.core.state is State.DISPATCHED)
                by_area = _area_bytes(after.compare_to(before, "filename"))
    finally:
        journal.close()
    return {
        "bytes_per_package": round(used / packages),
        "live": live,
        "by_area_per_package": {
            k: round(v / packages) for k, v in sorted(by_area.items(), key=lambda kv: -kv[1]) if abs(v) >= packages
        },
    }


async def _to_flat(engine: Engine, packages: int, live: int) -> None:
    """Run `packages` packages through the engine until every one is flat and its actor has ended: the
    market decides which entries fill; a hedged package is closed at once (passive exit, then the kill
    switch if it rests too long). Only the packages in flight are referenced here."""
    pending: list[PackageHandle] = []
    submitted = 0
    while submitted < packages or pending:
        while submitted < packages and len(pending) < live:
            pending.append(engine.handles[engine.submit(_spec())])
            submitted += 1
        await trio.sleep(0.05)
        for handle in pending:
            core = handle.core
            if core.state is State.HEDGED and core.is_quiescent() and handle.exit_policy is None:
                engine.request_close(handle.package_id, "bench: memory per finished package")
        pending = [h for h in pending if not h.done.is_set()]


def _engine_bytes() -> tuple[int, tracemalloc.Snapshot]:
    """Traced bytes, less those allocated in the venue adapters' own code (the sim venue's books and market)
    and tracemalloc's own."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, "*/legguard/adapters/*"), tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    return sum(stat.size for stat in snapshot.statistics("filename")), snapshot


async def _finished_memory(packages: int, directory: Path, warmup: int) -> dict[str, Any]:
    journal = Journal.open(directory / "finished.db", Durability.PROCESS)
    try:
        async with open_sim_venue(SimConfig(seed=13)) as sim:
            engine = Engine(sim, journal, _config(deadlines=Deadlines(fill=1.0)))
            async with engine.running([SPOT, PERP]):
                await trio.sleep(0.5)
                await _to_flat(engine, warmup, live=20)  # warm: caches, interned strings, the first allocations
                base, before = _settled_bytes(engine, sim)
                await _to_flat(engine, packages, live=20)
                sim.engine.forget_closed()  # the venue's history first: the window's own bytes are what is left
                gc.collect()
                in_window, _ = _engine_bytes()
                window_packages = len(engine.retired._expiry)
                # Past the recent window: what remains is what every finished package costs for good.
                used, after = _settled_bytes(engine, sim)
                held = len(engine.handles)
                retired = len(engine.retired)
    finally:
        journal.close()
    return {
        "bytes_per_finished_package": round((used - base) / packages, 1),
        # the recent-retirement window (late landings answered from memory), bounded by time and count
        "recent_window": {"packages": window_packages, "bytes": in_window - used},
        "finished": packages,
        "held_in_memory": held,
        "retired": retired,
        "by_area_per_finished_package": _by_area(after.compare_to(before, "filename"), packages),
    }


def _settled_bytes(engine: Engine, sim: Any) -> tuple[int, tracemalloc.Snapshot]:
    """The engine's traced bytes once the recent-retirement window has passed (expired now, as its next
    look-up would) and the sim venue has forgotten its closed orders and fills (which hold the engine's order
    ids and amounts: a real venue keeps its history on its side of the wire)."""
    engine.retired.expire(trio.current_time() + engine.retired.retention)
    sim.engine.forget_closed()
    gc.collect()
    return _engine_bytes()


def _area_bytes(stats: list[tracemalloc.StatisticDiff]) -> dict[str, int]:
    """Bytes allocated between two snapshots, by area: a legguard package, a site-package, or a stdlib file."""
    by_area: dict[str, int] = {}
    for stat in stats:
        path = stat.traceback[0].filename.replace(os.sep, "/")
        if "/legguard/" in path:
            area = "legguard." + path.split("/legguard/", 1)[1].split("/")[0]
        elif "/site-packages/" in path:
            area = path.split("/site-packages/", 1)[1].split("/")[0]  # trio, transitions, ...
        else:
            area = "stdlib:" + path.rsplit("/", 1)[-1]
        by_area[area] = by_area.get(area, 0) + stat.size_diff
    return by_area


def _by_area(stats: list[tracemalloc.StatisticDiff], packages: int) -> dict[str, float]:
    by_area = _area_bytes(stats)
    return {
        k: round(v / packages, 1) for k, v in sorted(by_area.items(), key=lambda kv: -kv[1]) if abs(v) >= packages / 10
    }


def finished_memory_run(packages: int, directory: Path, warmup: int = 100) -> dict[str, Any]:
    """tracemalloc across `packages` packages run to flat (after `warmup` more), once the engine's
    recent-retirement window has passed: the memory a finished package keeps for good. The sim venue's
    history of closed orders and fills is dropped before each snapshot (`_settled_bytes`)."""
    tracemalloc.start()
    try:
        clock = trio.testing.MockClock(autojump_threshold=0)
        result: dict[str, Any] = trio.run(_finished_memory, packages, directory, warmup, clock=clock)
    finally:
        tracemalloc.stop()
    return result


def memory_run(packages: int, directory: Path) -> dict[str, Any]:
    """tracemalloc over `packages` packages held live (dispatched, both legs resting at the sim venue):
    everything they cost, the engine's actors and cores as well as the venue's resting orders."""
    tracemalloc.start()
    try:
        result: dict[str, Any] = trio.run(_memory, packages, directory, clock=trio.testing.MockClock())
    finally:
        tracemalloc.stop()
    return result


# --- orchestration ----------------------------------------------------------------------------------------


def run_bench(sizes: Sizes, log: Log, *, wire: bool = True, quality: int = 0) -> dict[str, Any]:
    """Every measurement, `sizes.runs` times; the result holds medians over the runs and each run's values.
    With `quality` > 0, also the execution quality of that many packages per contestant (`_quality`,
    virtual time, deterministic: measured once)."""
    from ._quality import quality_run
    from ._wire import WARM_INTERVAL, wire_run

    started = time.perf_counter()
    log = _timed(log, started)
    info = machine()
    log(f"machine: {info['cpu']}, {info['cores']} cores, load {info['load_avg']}")
    runs: list[dict[str, Any]] = []
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    for n in range(sizes.runs):
        log(f"run {n + 1}/{sizes.runs}")
        run: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="legguard-bench-") as tmp:
            directory = Path(tmp)
            log(
                f"floors: {sizes.floor_samples} loopback send()s, SQLite commits (each durability), ccxt sign()s, "
                f"trio hops, timers and tasks"
            )
            run["floors"] = floors_run(sizes.floor_samples, directory, percentiles)
            if wire:
                try:
                    got = trio.run(partial(wire_run, warmed=sizes.reactions), sizes.pairs, sizes.reactions, log)
                finally:
                    if affinity is not None:
                        os.sched_setaffinity(0, affinity)
                run["skew_us"] = {mode: percentiles(xs) for mode, xs in got["skew"].items()}
                r = got["reaction"]
                run["reaction_us"] = percentiles(r.reaction_us)
                run["unwind_us"] = percentiles(r.unwind_us)
                run["reaction_reject_last"] = r.reject_last
                run["reaction_skipped"] = r.skipped
                run["reaction_stream_decided"] = r.stream_decided
                run["reaction_on_answer"] = r.on_answer
                if "reaction_plain" in got:
                    run["reaction_plain_us"] = percentiles(got["reaction_plain"].reaction_us)
                if "reaction_warmed" in got:
                    run["reaction_warmed_us"] = percentiles(got["reaction_warmed"].reaction_us)
            log(f"engine overhead: {sizes.overhead} packages, sim venue at zero latency")
            to_fire: list[float] = []
            run["overhead_us"] = percentiles(
                trio.run(partial(overhead_run, to_fire=to_fire), sizes.overhead, directory)
            )
            run["overhead_fire_us"] = percentiles(to_fire)
            log(f"engine overhead: {sizes.overhead} packages again, keep_warm = {WARM_INTERVAL}")
            run["overhead_warmed_us"] = percentiles(
                trio.run(partial(overhead_run, keep_warm=WARM_INTERVAL), sizes.overhead, directory)
            )
            log(f"engine overhead: {sizes.overhead} packages again, its path stamped phase by phase")
            run["overhead_trace"] = trio.run(overhead_trace_run, sizes.overhead, directory)
            log(f"throughput: {sizes.packages} packages, virtual time, journal PROCESS")
            run["throughput"] = throughput_run(sizes.packages, directory)
            if n == 0:  # where its CPU goes: a profile, measured once (cProfile roughly halves the rate)
                profiled = max(sizes.packages // 3, 50)
                log(f"throughput: {profiled} packages again under cProfile, CPU by area")
                run["throughput_profile"] = throughput_profile_run(profiled, directory)
            # The tasks and timers per package are the design's (the first run's profile counts them); the
            # commits and every floor are this run's.
            floor = throughput_floor(run["throughput"], run["floors"], runs[0]["throughput_profile"] if runs else
                                     run["throughput_profile"])  # fmt: skip
            if floor is not None:
                run["throughput"]["floor"] = floor
            log(
                f"journal: {sizes.journal_rows} appends grouped and (process) one each, "
                f"{max(sizes.journal_rows // 20, 100)} one each (power)"
            )
            run["journal"] = {d.value: journal_run(sizes.journal_rows, directory, d) for d in Durability}
            if n == 0:  # deterministic enough to measure once: it is slow under tracemalloc
                log(f"memory: {sizes.memory_packages} live packages under tracemalloc")
                run["memory"] = memory_run(sizes.memory_packages, directory)
                log(f"memory: {sizes.finished_packages} packages run to flat under tracemalloc")
                run["finished_memory"] = finished_memory_run(sizes.finished_packages, directory)
        runs.append(run)
    result = summarize(runs)
    if quality > 0:
        with tempfile.TemporaryDirectory(prefix="legguard-bench-") as tmp:
            result["quality"] = quality_run(quality, Path(tmp), log=log)
    result["machine"] = info
    result["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    result["sizes"] = dataclasses.asdict(sizes)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["runs"] = runs
    return result


def _timed(log: Log, started: float) -> Log:
    def timed(line: str) -> None:
        log(f"[{time.perf_counter() - started:6.1f} s] {line}")

    return timed


def _median(values: Sequence[float]) -> float:
    xs = [v for v in values if v == v]  # NaN-free
    return round(statistics.median(xs), 1) if xs else float("nan")


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of every headline number, in the shape `--json` promises."""

    def med(path: Sequence[str]) -> float:
        vals = []
        for run in runs:
            node: Any = run
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, int | float):
                vals.append(float(node))
        return _median(vals)

    out: dict[str, Any] = {}
    if all("skew_us" in r for r in runs):
        out["skew_us"] = {
            mode: {q: med(["skew_us", mode, q]) for q in ("p50", "p90", "p99")}
            for mode in ("sequential", "gather", "legguard")
        }
        leg = out["skew_us"]["legguard"]["p50"]
        out["skew_ratio"] = {
            "sequential_over_legguard": round(out["skew_us"]["sequential"]["p50"] / leg, 1) if leg else None,
            "gather_over_legguard": round(out["skew_us"]["gather"]["p50"] / leg, 1) if leg else None,
        }
        out["reaction_us"] = {q: med(["reaction_us", q]) for q in ("p50", "p90", "p99")}
        out["unwind_us"] = {q: med(["unwind_us", q]) for q in ("p50", "p90", "p99")}
    out["overhead_us"] = {q: med(["overhead_us", q]) for q in ("p50", "p90", "p99")}
    # The earlier endpoint: the second leg's `fire` entered (its send task running, after the actor's start).
    out["overhead_fire_us"] = {q: med(["overhead_fire_us", q]) for q in ("p50", "p90", "p99")}
    # Side by side in each run: the same measures with the decision path kept warm (`engine.keep_warm`).
    # And, interleaved with the reaction's own samples, the reaction with no cancel armed for an answer.
    for name in ("reaction_warmed_us", "overhead_warmed_us", "reaction_plain_us"):
        if all(name in r for r in runs):
            out[name] = {q: med([name, q]) for q in ("p50", "p90", "p99")}
    if all("overhead_trace" in r for r in runs):
        # The overhead's path phase by phase (a stamped run of its own beside each measured one): medians of
        # each run's p50 per phase, and of the stamped whole.
        out["overhead_trace_us"] = {
            "phases_p50": {k: med(["overhead_trace", "phases_p50", k]) for k, _ in OVERHEAD_PHASES},
            "total_p50": med(["overhead_trace", "total_p50"]),
        }
    profiles = [r["throughput_profile"] for r in runs if "throughput_profile" in r]
    if profiles:
        out["throughput_profile"] = profiles[0]
    out["packages_per_s"] = med(["throughput", "packages_per_s"])
    # The engine commits its steps grouped: that is the rate its journal sustains.
    out["journal_events_per_s"] = med(["journal", "process", "grouped"])
    out["journal_power_events_per_s"] = med(["journal", "power", "grouped"])
    out["journal"] = {
        d.value: {k: med(["journal", d.value, k]) for k in ("single", "batched_100", "grouped", "group_size", "joined")}
        for d in Durability
    }
    out["steps_per_commit"] = med(["throughput", "steps_per_commit"])
    if all("floor" in r.get("throughput", {}) for r in runs):
        out["throughput_floor"] = {
            k: med(["throughput", "floor", k])
            for k in (
                "us_per_package",
                "packages_per_s",
                "commits_per_package",
                "steps_per_package",
                "timers_per_package",
                "tasks_per_package",
            )
        }
    out["bytes_per_package"] = med(["memory", "bytes_per_package"])
    out["bytes_per_finished_package"] = med(["finished_memory", "bytes_per_finished_package"])
    if all("floors" in r for r in runs):
        out["floors"] = {
            name: {q: med(["floors", name, q]) for q in ("p50", "p90", "p99")}
            for name in FLOOR_NAMES
            if all(name in r["floors"] for r in runs)
        }
        # Each latency as a multiple of its floor (the sum `FLOOR_OF` names), quantile by quantile.
        out["floor_multiple"] = {}
        for latency in FLOOR_OF:
            node = out.get(latency)
            if latency == "skew_us":
                node = out.get("skew_us", {}).get("legguard")
            if not isinstance(node, dict):
                continue
            multiples = {}
            for q in ("p50", "p99"):
                floor, value = floor_value(out["floors"], latency, q), node.get(q)
                if floor and isinstance(value, int | float) and value == value:
                    multiples[q] = round(value / floor, 1)
            out["floor_multiple"][latency] = multiples
            cold = floor_value(out["floors"], latency, "p50", cold=True)
            if cold and isinstance(node.get("p50"), int | float):
                out.setdefault("cold_floor_multiple", {})[latency] = {"p50": round(node["p50"] / cold, 1)}
    return out


def _values(result: Mapping[str, Any]) -> dict[str, float | None]:
    def get(*path: str) -> float | None:
        node: Any = result
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        return float(node) if isinstance(node, int | float) and node == node else None

    return {
        "skew_legguard_p50_us": get("skew_us", "legguard", "p50"),
        "skew_gather_p50_us": get("skew_us", "gather", "p50"),
        "skew_gather_over_legguard": get("skew_ratio", "gather_over_legguard"),
        "reaction_p50_us": get("reaction_us", "p50"),
        "reaction_p99_us": get("reaction_us", "p99"),
        "unwind_p50_us": get("unwind_us", "p50"),
        "unwind_p99_us": get("unwind_us", "p99"),
        "overhead_p50_us": get("overhead_us", "p50"),
        "packages_per_s": get("packages_per_s"),
        # durable events/s as the engine commits them: grouped (one transaction for many rows)
        "journal_process_events_per_s": get("journal", "process", "grouped"),
        "journal_power_events_per_s": get("journal", "power", "grouped"),
        "journal_process_single_per_s": get("journal", "process", "single"),
        "journal_power_single_per_s": get("journal", "power", "single"),
        "bytes_per_live_package": get("bytes_per_package"),
        "bytes_per_finished_package": get("bytes_per_finished_package"),
    }


def target_checks(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of the issue: the measured value, the target, met or missed and by how much."""
    values = _values(result)
    out: dict[str, dict[str, Any]] = {}
    for name, (op, target) in TARGETS.items():
        value = values.get(name)
        if value is None:
            continue
        met = value <= target if op == "<=" else value < target if op == "<" else value >= target
        factor = value / target if op in ("<=", "<") else target / value if value else float("inf")
        out[name] = {"value": value, "target": f"{op} {target:g}", "met": met,
                     "off_by": None if met else f"{factor:.2f}x" if factor < 1.1 else f"{factor:.1f}x"}  # fmt: skip
    return out


def _n(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"


def throughput_floor_text(result: Mapping[str, Any]) -> str:
    floor = result.get("throughput_floor")
    if not isinstance(floor, Mapping):
        return "—"
    return (f"{_n(floor['us_per_package'])} µs per package ({floor['commits_per_package']:g} commits, "
            f"{floor['timers_per_package']:g} timers run to their deadline, {floor['tasks_per_package']:g} tasks) "
            f"= {_n(floor['packages_per_s'], 0)} packages/s")  # fmt: skip


def throughput_times(result: Mapping[str, Any]) -> str:
    """Time per package as a multiple of the floor's (the floor's packages/s over the measured)."""
    floor, pps = result.get("throughput_floor"), result.get("packages_per_s")
    if not isinstance(floor, Mapping) or not isinstance(pps, int | float) or not pps or pps != pps:
        return "—"
    return f"{floor['packages_per_s'] / pps:.1f}x"


def _grouped_parts(result: Mapping[str, Any], durability: Durability) -> float | None:
    """The grouped journal bench's rate if it cost only its two halves, each measured alone in the same run:
    the trio tasks joining groups with nothing written (`joined`) and the rows without any task
    (`batched_100`): per row, the sum of the two times."""
    journal = result.get("journal", {}).get(durability.value, {})
    joined, batched = journal.get("joined"), journal.get("batched_100")
    if not (isinstance(joined, int | float) and isinstance(batched, int | float) and joined > 0 and batched > 0):
        return None
    return 1 / (1 / joined + 1 / batched)


def target_table(result: Mapping[str, Any]) -> list[dict[str, str]]:
    """The issue's table, from this run: measure | now | target | met? | floor (same run) | x floor. A row is
    met when every target in it is; the floor is what bounds the measure on this machine (`_floors.FLOOR_OF`),
    so a miss can be read against it."""
    v = _values(result)
    checks = target_checks(result)
    floors: Mapping[str, Any] = result.get("floors", {})
    multiple: Mapping[str, Any] = result.get("floor_multiple", {})

    def met(*names: str) -> str:
        got = [checks[n]["met"] for n in names if n in checks]
        if len(got) < len(names):
            return "not measured"
        missed = [f"{checks[n]['off_by']}" for n in names if not checks[n]["met"]]
        return "met" if not missed else "missed (" + " / ".join(missed) + " off)"

    def floor(latency: str) -> str:
        p50, p99 = floor_value(floors, latency, "p50"), floor_value(floors, latency, "p99")
        terms = " + ".join(f"{k} {name.removesuffix('_us').replace('_', ' ')}" if k > 1 else
                           name.removesuffix("_us").replace("_", " ") for name, k in FLOOR_OF[latency])  # fmt: skip
        if p50 is None:
            return "—"
        cold = floor_value(floors, latency, "p50", cold=True)
        after = f"; after {COLD_GAP * 1000:g} ms asleep: {_n(cold)} µs" if cold is not None else ""
        return f"{_n(p50)} / {_n(p99)} µs ({terms}){after}"

    def times(latency: str, *qs: str) -> str:
        got = multiple.get(latency, {})
        text = " / ".join(f"{got[q]:g}x" if q in got else "—" for q in qs)
        cold = result.get("cold_floor_multiple", {}).get(latency, {}).get("p50")
        return f"{text} (p50 {cold:g}x the floor after a wait)" if cold is not None else text

    def per_s(name: str) -> float | None:
        us = floors.get(name, {}).get("p50") if isinstance(floors.get(name), Mapping) else None
        return 1e6 / us if isinstance(us, int | float) and us > 0 else None

    commit_s, fsync_s = per_s("commit_process_us"), per_s("commit_power_us")

    def slower(bare: float | None, single: float | None, durability: Durability) -> str:
        # one transaction per row, against one bare commit per row; grouped, against its two halves alone
        text = f"{bare / single:.1f}x (one transaction each)" if bare and single else "—"
        parts, grouped = _grouped_parts(result, durability), v[f"journal_{durability.value}_events_per_s"]
        return f"{text}; grouped {parts / grouped:.2f}x its parts" if parts and grouped else text

    def bare_and_parts(label: str, floor_name: str, per_second: float | None, durability: Durability) -> str:
        text = f"{label} {_n(floors.get(floor_name, {}).get('p50'))} µs = {_n(per_second, 0)} commits/s"
        journal = result.get("journal", {}).get(durability.value, {})
        parts = _grouped_parts(result, durability)
        if parts is None:
            return text
        return (f"{text}; grouped, its parts alone: {_n(journal['joined'], 0)} joins/s (trio, nothing written) + "
                f"{_n(journal['batched_100'], 0)} rows/s (batches of 100, no task) = {_n(parts, 0)}/s")  # fmt: skip

    rows = [
        ("inter-leg skew p50 (legguard / naive gather)",
         f"{_n(v['skew_legguard_p50_us'])} / {_n(v['skew_gather_p50_us'])} µs",
         "≤ 25 µs, gather ≥ 4x legguard", met("skew_legguard_p50_us", "skew_gather_over_legguard"),
         floor("skew_us"), times("skew_us", "p50")),
        ("kill switch: decisive answer in → cancel out, p50 / p99",
         f"{_n(v['reaction_p50_us'])} / {_n(v['reaction_p99_us'])} µs", "≤ 250 / ≤ 1,000 µs",
         met("reaction_p50_us", "reaction_p99_us"), floor("reaction_us"), times("reaction_us", "p50", "p99")),
        ("kill switch: cancel answer in → unwind order out, p50 / p99",
         f"{_n(v['unwind_p50_us'])} / {_n(v['unwind_p99_us'])} µs", "≤ 500 / ≤ 2,000 µs",
         met("unwind_p50_us", "unwind_p99_us"), floor("unwind_us"), times("unwind_us", "p50", "p99")),
        ("engine overhead: signal → both legs at the venue, p50", f"{_n(v['overhead_p50_us'])} µs", "≤ 250 µs",
         met("overhead_p50_us"), floor("overhead_us"), times("overhead_us", "p50")),
        ("throughput, whole engine + journal (PROCESS), virtual time", f"{_n(v['packages_per_s'])} packages/s",
         "≥ 2,000 packages/s", met("packages_per_s"), throughput_floor_text(result), throughput_times(result)),
        ("journal, durable events/s (PROCESS)",
         f"{_n(v['journal_process_events_per_s'], 0)} grouped as the engine commits "
         f"[{_n(v['journal_process_single_per_s'], 0)} one transaction each]", "≥ 100,000",
         met("journal_process_events_per_s"),
         bare_and_parts("bare commit", "commit_process_us", commit_s, Durability.PROCESS),
         slower(commit_s, v["journal_process_single_per_s"], Durability.PROCESS)),
        ("journal, durable events/s (POWER, fsync)",
         f"{_n(v['journal_power_events_per_s'], 0)} grouped as the engine commits "
         f"[{_n(v['journal_power_single_per_s'], 0)} one transaction each]", "≥ 20,000",
         met("journal_power_events_per_s"),
         bare_and_parts("bare fsync commit", "commit_power_us", fsync_s, Durability.POWER),
         slower(fsync_s, v["journal_power_single_per_s"], Durability.POWER)),
        ("memory per live package", f"{_n(v['bytes_per_live_package'], 0)} B", "≤ 8 KB",
         met("bytes_per_live_package"), "—", "—"),
        ("memory kept per finished package", f"{_n(v['bytes_per_finished_package'])} B", "< 0.5 KB",
         met("bytes_per_finished_package"), "—", "—"),
    ]  # fmt: skip
    keys = ("measure", "now", "target", "met", "floor", "x_floor")
    return [dict(zip(keys, row, strict=True)) for row in rows]
