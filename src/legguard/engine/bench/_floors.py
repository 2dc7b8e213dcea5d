"""`legguard bench`, the floors: what this machine cannot do faster, measured in the same run as the engine's
numbers so that each latency can be read as a multiple of what bounds it (and a noisy machine shows as floors
that move with the latencies).

- a bare loopback `send()`: one order request's bytes (as large as a signed Binance order) handed to the
  kernel on a connected TCP socket over 127.0.0.1, `TCP_NODELAY` as on the order path; the receiver drains
  between samples, outside the timing;
- a bare SQLite commit in each durability, with the journal's own settings and nothing else: one ~300-byte
  row inserted and committed, WAL with `synchronous=NORMAL` (PROCESS) or `synchronous=FULL`, one fsync per
  commit (POWER); a passive checkpoint every 100 commits outside the timing (the journal checkpoints on
  another thread), so the WAL is reused in place as the journal's is;
- one ccxt `sign()` of an order request (Binance spot `POST /api/v3/order`, HMAC-SHA256 over the query), the
  work a request not prepared in advance adds;
- one trio scheduler hop: a task that wakes another and waits, to the other running (one pass of trio's
  run loop with nothing else to do). The design runs every package as an actor task, and a routine step's
  group commit yields one pass; nothing written in Python on trio hops faster. (A new package's dispatch no
  longer pays it: `Engine.submit` takes that step on its caller's stack.)
- one trio timer: a `trio.sleep` that runs to its deadline, under the `MockClock` with autojump the throughput
  run uses (trio makes a sleep of a cancel scope whose deadline cancels it: the clock jumps, the scope is
  cancelled, `Cancelled` is raised into the sleeper and caught by its scope). The sim venue's latency model is
  made of these: every one-way trip of a request or an answer, every stream delivery;
- one trio task: spawned into an open nursery, run and exited (per task, in batches of 100 with nothing else
  running), as the engine starts an actor per package and a send task per leg;
- one SQLite transaction of a new package's write-ahead shape on the journal's own schema (`Engine.submit`'s
  commit: five journal rows, the package's view, the chain head), the SQL alone.

The `send()`, the PROCESS commit and the dispatch's transaction are measured again after `COLD_GAP` asleep.
Throughput's floor adds commits, timers and tasks up per package (`_harness.throughput_floor`).

Which floor bounds which latency is `FLOOR_OF` (the docs table prints it beside every latency).
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# latency (the harness's result key) -> (floor, how many of it) terms whose sum bounds it on this machine
FLOOR_OF: Mapping[str, tuple[tuple[str, int], ...]] = {
    # the second leg's bytes leave one send() after the first's
    "skew_us": (("send_us", 1),),
    # the cancel is journaled (`cancel_armed`) and signed before its decisive answer comes, and written as that
    # answer is read: one send. (Decided by the answer's own step, as in the bench's row beside it with
    # `cancel_on_answer` off, it is one commit more.)
    "reaction_us": (("send_us", 1),),
    # likewise for the unwind order (armed while the cancel is in flight)
    "unwind_us": (("commit_process_us", 1), ("send_us", 1)),
    # the sim venue at zero latency signs nothing and sends nothing: creation and dispatch journaled in one
    # commit, on the submitter's stack (`Engine.submit` takes the dispatch step itself: no task hop on the path),
    # a transaction of that shape on the journal's schema (five rows, the package's view, the chain head)
    "overhead_us": (("dispatch_commit_us", 1),),
}
# The cold floors' wait: about what the engine waits, asleep, between a package's orders going out and the
# venue's answer that decides its kill switch (the wire bench's loopback emulator: 1-3 ms).
COLD_GAP = 0.002
# latency -> the same terms after COLD_GAP asleep (`floors_run`'s cold floors), where one is measured
COLD_FLOOR_OF: Mapping[str, tuple[tuple[str, int], ...]] = {
    "reaction_us": (("send_cold_us", 1),),
    "unwind_us": (("commit_process_cold_us", 1), ("send_cold_us", 1)),
    "overhead_us": (("dispatch_commit_cold_us", 1),),
}
# Every floor `floors_run` measures (its result's keys).
FLOOR_NAMES: tuple[str, ...] = (
    "send_us", "commit_process_us", "commit_power_us", "sign_us", "hop_us", "timer_us", "task_us",
    "dispatch_commit_us", "send_cold_us", "commit_process_cold_us", "dispatch_commit_cold_us",
)  # fmt: skip
# One order request as the order path writes it (request line, headers, signed body): about this size.
REQUEST_BYTES = 620


def _timed(fn: Callable[[], object], samples: int) -> list[float]:
    out: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def send_floor(samples: int, gap: float = 0.0) -> list[float]:
    """µs per `send()` of one order request's bytes on a TCP loopback connection; `gap`: seconds idle (asleep)
    before each, as the engine is before a venue's answer wakes it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            payload = b"x" * REQUEST_BYTES
            out: list[float] = []
            for _ in range(samples):
                if gap:
                    time.sleep(gap)
                t0 = time.perf_counter_ns()
                client.send(payload)
                out.append((time.perf_counter_ns() - t0) / 1000)
                got = 0
                while got < REQUEST_BYTES:  # drained outside the timing: every send finds an empty buffer
                    got += len(peer.recv(65536))
        finally:
            client.close()
            peer.close()
    return out


def commit_floor(path: Path, synchronous: int, samples: int, gap: float = 0.0) -> list[float]:
    """µs per bare SQLite transaction (one row inserted, committed) in WAL mode at `synchronous`; `gap`:
    seconds idle (asleep) before each."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE IF NOT EXISTS floor (seq INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        row = "x" * 300

        def commit() -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO floor (payload) VALUES (?)", (row,))
            conn.execute("COMMIT")

        commit()  # the file and the WAL exist before the first sample
        out: list[float] = []
        for i in range(samples):
            if i % 100 == 0:
                # As the journal's checkpointer does (on its own thread): the WAL is copied back and then reused
                # from its start, so commits overwrite it in place instead of growing the file. A growing file
                # makes each fsync also commit the file's new size: slower than the journal, not a floor.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if gap:
                time.sleep(gap)
            out += _timed(commit, 1)
        return out
    finally:
        conn.close()


# The write-ahead transaction of a new package (`Engine.submit`): its creation row and its dispatch step's rows
# (the event, one intent per leg, the transition), each about this long, as the journal writes them.
DISPATCH_ROWS = 5
ROW_TEXT_BYTES = 300


def dispatch_commit_floor(path: Path, samples: int, gap: float = 0.0) -> list[float]:
    """µs per bare SQLite transaction of a new package's write-ahead shape on the journal's own schema (a journal
    file `Journal.open` made, PROCESS durability): `BEGIN IMMEDIATE`, `DISPATCH_ROWS` journal rows in one
    statement, the package's row in the packages view, the chain head's guarded update, `COMMIT`, with the
    statements the journal runs. The SQL alone: every row and hash is made before the timing (no canonical
    text, no SHA-256); `gap`: seconds asleep before each. A checkpoint every 100 commits, outside the timing,
    as the journal's checkpointer does."""
    from legguard.engine.journal._store import _INSERT_PACKAGE, _INSERT_ROWS, Durability, Journal

    with Journal.open(path, Durability.PROCESS):
        pass  # the schema, WAL mode and the meta rows, as the engine's journal has them
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=1")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        seq = conn.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()[0]
        head = conn.execute("SELECT value FROM meta WHERE key = 'head'").fetchone()
        if head is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('head', ?)", (f"{seq}:{'0' * 64}",))
            head = (f"{seq}:{'0' * 64}",)
        previous = head[0]
        text = "x" * ROW_TEXT_BYTES
        out: list[float] = []
        for i in range(samples):
            package_id = f"F{i:06d}"
            rows: list[Any] = []
            for _ in range(DISPATCH_ROWS):
                seq += 1
                rows += (seq, "event", package_id, text, 1.0, 2.0, f"{seq - 1:064x}", f"{seq:064x}")
            view = (package_id, "dispatched", "0", "0", 0, text, seq - DISPATCH_ROWS + 1, 1.0, 2.0, seq, 1.0, 2.0, None)
            now = f"{seq}:{seq:064x}"
            if i % 100 == 0:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter_ns()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_INSERT_ROWS[DISPATCH_ROWS], rows)
            conn.execute(_INSERT_PACKAGE, view)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'head' AND value = ?", (now, previous))
            conn.execute("COMMIT")
            out.append((time.perf_counter_ns() - t0) / 1000)
            previous = now
        return out
    finally:
        conn.close()


def sign_floor(samples: int) -> list[float]:
    """µs per ccxt `sign()` of a Binance spot order request (the venue's own path: `_Request.sign`)."""
    import ccxt
    from ccxt.base.types import Entry

    ex: Any = ccxt.binance({"apiKey": "k" * 64, "secret": "s" * 64})
    entry: Any = next(c for cls in type(ex).__mro__ if isinstance(c := cls.__dict__.get("private_post_order"), Entry))
    params = {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT_MAKER", "quantity": "0.01", "price": "2000.00",
              "newClientOrderId": "lgab12000001-SE0"}  # fmt: skip
    ex.sign(entry.path, entry.api, entry.method, dict(params))  # warm: lazy imports, option look-ups
    return _timed(lambda: ex.sign(entry.path, entry.api, entry.method, dict(params)), samples)


def hop_floor(samples: int) -> list[float]:
    """µs from a trio task waking another (`reschedule`) and waiting, to the other running: one scheduler hop."""
    import trio
    import trio.lowlevel
    import trio.testing

    out: list[float] = []

    def never(_: object) -> trio.lowlevel.Abort:
        return trio.lowlevel.Abort.FAILED

    async def main() -> None:
        me = trio.lowlevel.current_task()
        other: list[trio.lowlevel.Task] = []
        woken_at = [0]

        async def partner() -> None:
            other.append(trio.lowlevel.current_task())
            for _ in range(samples):
                await trio.lowlevel.wait_task_rescheduled(never)
                out.append((time.perf_counter_ns() - woken_at[0]) / 1000)
                trio.lowlevel.reschedule(me)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(partner)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(samples):
                woken_at[0] = time.perf_counter_ns()
                trio.lowlevel.reschedule(other[0])
                await trio.lowlevel.wait_task_rescheduled(never)

    trio.run(main)
    return out


def timer_floor(samples: int) -> list[float]:
    """µs per `trio.sleep` run to its deadline (1 ms of virtual time) under the throughput run's clock (`MockClock`,
    autojump at once), one task sleeping: the clock's jump, the scope's cancellation, the sleeper resumed."""
    import trio
    import trio.testing

    out: list[float] = []

    async def main() -> None:
        await trio.sleep(0.001)  # warm: the clock's autojump task is running
        for _ in range(samples):
            t0 = time.perf_counter_ns()
            await trio.sleep(0.001)
            out.append((time.perf_counter_ns() - t0) / 1000)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out


TASK_BATCH = 100


def task_floor(samples: int) -> list[float]:
    """µs per trio task spawned into an open nursery, run and exited: batches of `TASK_BATCH` tasks that do
    nothing, each batch's time over its tasks (one sample per batch; `samples` tasks in all, at least one
    batch)."""
    import trio

    out: list[float] = []

    async def nothing() -> None:
        pass

    async def main() -> None:
        for _ in range(max(samples // TASK_BATCH, 1)):
            t0 = time.perf_counter_ns()
            async with trio.open_nursery() as nursery:
                for _ in range(TASK_BATCH):
                    nursery.start_soon(nothing)
            out.append((time.perf_counter_ns() - t0) / 1000 / TASK_BATCH)

    trio.run(main)
    return out


def floors_run(samples: int, directory: Path, percentiles: Callable[[list[float]], dict[str, float]]) -> dict[str, Any]:
    """Every floor's percentiles (µs); POWER commits get a tenth of the samples (each is an fsync)."""
    return {
        "send_us": percentiles(send_floor(samples)),
        "commit_process_us": percentiles(commit_floor(directory / "floor-process.db", 1, samples)),
        "commit_power_us": percentiles(commit_floor(directory / "floor-power.db", 2, max(samples // 10, 20))),
        "sign_us": percentiles(sign_floor(samples)),
        "hop_us": percentiles(hop_floor(samples)),
        "timer_us": percentiles(timer_floor(samples)),
        "task_us": percentiles(task_floor(samples)),
        "dispatch_commit_us": percentiles(dispatch_commit_floor(directory / "floor-dispatch.db", samples)),
        # The same after COLD_GAP asleep: what this machine charges for code and data left untouched that long
        # (its caches are shared; docs/performance.md, "A cold path"). Fewer samples: each waits the gap.
        "send_cold_us": percentiles(send_floor(max(samples // 10, 50), COLD_GAP)),
        "commit_process_cold_us": percentiles(
            commit_floor(directory / "floor-cold.db", 1, max(samples // 10, 50), COLD_GAP)
        ),
        "dispatch_commit_cold_us": percentiles(
            dispatch_commit_floor(directory / "floor-dispatch-cold.db", max(samples // 10, 50), COLD_GAP)
        ),
    }


def floor_value(floors: Mapping[str, Any], latency: str, q: str = "p50", *, cold: bool = False) -> float | None:
    """The floor bounding `latency` (a `FLOOR_OF` key, or `COLD_FLOOR_OF` if `cold`) at quantile `q` of each
    term; None if not measured."""
    terms = (COLD_FLOOR_OF if cold else FLOOR_OF).get(latency, ())
    total = 0.0
    for name, times in terms:
        value = floors.get(name, {}).get(q) if isinstance(floors.get(name), dict) else floors.get(name)
        if not isinstance(value, int | float) or value != value:
            return None
        total += times * value
    return round(total, 1) if terms else None
