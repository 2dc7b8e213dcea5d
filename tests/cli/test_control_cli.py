"""`legguard status | halt | resume | close | stop` against a running engine (`run_engine` on the simulated
venue, virtual time), the commands run as the CLI in a thread; and the clear exit 3 when nothing runs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock
from typer.testing import CliRunner, Result

from legguard.cli import app
from legguard.engine import EngineMode, Journal
from legguard.engine.app._config import parse_config
from legguard.engine.app._rpc import CONTROL
from legguard.engine.app._runner import RunOptions, RunStatus, run_engine
from legguard.fsm import State

CONFIG: dict[str, Any] = {
    "venue": {"kind": "sim", "seed": 7},
    "pairs": [{"spot": "ETH/USDT", "perp": "ETH/USDT:USDT", "quantity": "0.05"}],
    "breaker": {"max_orphans": 50},
}


@dataclass
class Running:
    db: Path
    status: RunStatus
    report: dict[str, Any]
    finished: trio.Event

    async def cli(self, *args: str) -> Result:
        argv = [*args, "--db", str(self.db)]
        return await trio.to_thread.run_sync(lambda: CliRunner().invoke(app, argv))


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    db = tmp_path / "j.db"
    status = RunStatus()
    r = Running(db, status, {}, trio.Event())

    async def run() -> None:
        r.report.update(await run_engine(parse_config(CONFIG), db, None, status, options=RunOptions()))
        r.finished.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await status.ready.wait()
        await trio.sleep(5)  # some packages hedged
        yield r
        status.stop.set()


def states(r: Running) -> dict[str, int]:
    assert r.status.engine is not None
    return dict(r.status.engine.final_states())


async def test_status_prints_the_dashboard_and_json(autojump_clock: MockClock, running: Running) -> None:
    text = await running.cli("status")
    raw = await running.cli("status", "--json")

    assert text.exit_code == 0, text.output
    assert "RUNNING" in text.output and "exposure (base units)" in text.output and "breaker" in text.output
    data = json.loads(raw.stdout)
    assert data["mode"] == "running" and data["packages"]["total"] > 0
    assert set(data) >= {"exposure", "live", "breaker", "venue", "deadman", "margin", "errors", "journal"}
    assert "margin" in text.output and data["margin"]["failures"] == 0


async def test_halt_resume_close_stop(autojump_clock: MockClock, running: Running) -> None:
    engine = running.status.engine
    assert engine is not None

    halt = await running.cli("halt", "--reason", "news at 14:00")
    assert halt.exit_code == 0, halt.output
    assert halt.stdout.strip() == "halted: news at 14:00"
    assert engine.mode is EngineMode.HALTED
    again = await running.cli("halt")  # an operator halt over an operator halt: recorded, still halted
    assert again.exit_code == 0

    resume = await running.cli("resume", "--reason", "news passed")
    assert (resume.exit_code, resume.stdout.strip()) == (0, "resumed")
    not_halted = await running.cli("resume")
    assert not_halted.exit_code == 1 and "not resumed: engine is running" in not_halted.stdout

    # Trading again: wait (virtual time) until the market has hedged a package to close. A fixed sleep was
    # flaky: the CLI's calls run in threads, so the autojump clock moves on while they are answered, and the
    # packages of those seconds may have hedged and been closed again by the time it was read.
    with trio.fail_after(60):
        while states(running).get("hedged", 0) == 0:  # noqa: ASYNC110 (the engine has no "a package hedged" event)
            await trio.sleep(0.25)
    hedged_before = states(running).get("hedged", 0)
    assert hedged_before > 0
    halt = await running.cli("halt", "--reason", "closing out")  # so no new package opens meanwhile
    with trio.fail_after(60):  # a package in flight at the halt may still hedge: close once none is in flight
        for pid in list(engine.live):
            handle = engine.handles.get(pid)  # None: flat and released from memory since `live` was read
            if handle is not None:
                await handle.wait_until(lambda c: c.state in (State.HEDGED, State.FLAT))
    close = await running.cli("close", "--all", "--reason", "end of day")
    assert close.exit_code == 0, close.output
    assert close.stdout.startswith("closing ")
    await trio.sleep(10)
    assert states(running).get("hedged", 0) == 0

    stop = await running.cli("stop", "--reason", "deploy")
    assert stop.exit_code == 0 and "stopping" in stop.stdout
    with trio.fail_after(60):
        await running.finished.wait()
    assert running.report["final_states"].get("hedged", 0) == 0

    with Journal.open(running.db, readonly=True) as journal:
        actions = [(r.payload["action"], r.payload["reason"]) for r in journal.engine_log() if r.kind == CONTROL]
        closed = [p for p in journal.packages() if p.state is State.FLAT]
        per_package = [r for p in closed for r in journal.timeline(p.package_id) if r.kind == CONTROL]
    assert actions[:4] == [
        ("halt", "news at 14:00"),
        ("halt", "operator halt"),
        ("resume", "news passed"),
        ("resume", "operator resume"),
    ]
    assert ("close", "end of day") in actions and actions[-1] == ("stop", "deploy")
    assert len(per_package) >= hedged_before


async def test_close_refusals(autojump_clock: MockClock, running: Running) -> None:
    unknown = await running.cli("close", "P999999")
    usage = await running.cli("close")
    both = await running.cli("close", "P000001", "--all")

    assert unknown.exit_code == 1 and "unknown package id(s) P999999" in unknown.output
    assert usage.exit_code == 2 and "exactly one" in usage.output
    assert both.exit_code == 2


async def test_a_second_run_on_the_same_journal_is_refused(autojump_clock: MockClock, running: Running) -> None:
    with pytest.raises(Exception, match="another engine is running on this journal"):
        await run_engine(parse_config(CONFIG), running.db, 1.0)


@pytest.mark.parametrize("command", [["status"], ["halt"], ["resume"], ["close", "--all"], ["stop"]])
def test_no_engine_running_is_one_line_and_exit_3(tmp_path: Path, command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--db", str(tmp_path / "nothing.db")])

    assert result.exit_code == 3
    assert result.output.strip().startswith("error: no engine is running on journal")
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


async def test_watch_outside_a_terminal_prints_json_lines_until_the_engine_stops(
    autojump_clock: MockClock, running: Running
) -> None:
    rpc = running.status.rpc
    assert rpc is not None
    answered, watched = [0], trio.Event()
    status = rpc.status

    def counting() -> dict[str, Any]:
        answered[0] += 1
        if answered[0] == 3:
            watched.set()
        return status()

    rpc.status = counting  # type: ignore[method-assign]

    async def stop_soon() -> None:
        await watched.wait()
        running.status.stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_soon)
        watch = await running.cli("status", "--watch", "--interval", "0.01")

    lines = [json.loads(x) for x in watch.stdout.splitlines()]
    assert watch.exit_code == 0, watch.output
    assert len(lines) >= 3 and lines[0]["mode"] == "running"
    assert "engine stopped" in watch.stderr


async def test_recover_refuses_while_an_engine_runs_on_the_journal(
    autojump_clock: MockClock, running: Running, tmp_path: Path
) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(
        '[venue]\nkind = "sim"\n[[pairs]]\nspot = "ETH/USDT"\nperp = "ETH/USDT:USDT"\nquantity = "0.05"\n'
    )

    result = await running.cli("recover", "--config", str(config))

    assert result.exit_code == 2
    assert "another engine is running on this journal" in " ".join(result.output.split())
