"""The crash harness: `legguard run` as a separate process against `legguard emulator` (another process),
SIGKILLed at each dangerous point (`LEGGUARD_CRASH_AT`, a real SIGKILL: no cleanup), then restarted on the same
journal. After every restart: each package hedged or flat; the emulator's balances and positions agree with
the packages (delta-neutral within fees when hedged, untouched when flat); no client order id was used for
two different orders; `legguard audit verify` passes; the package's timeline shows the recovery.

Real processes and real time: the harness polls the emulator's control API with short waits, each bounded.
The market never moves by itself (`--tick 3600`); the harness fills resting orders through the emulator's
`/_emulator/trade` and breaks legs with `/_emulator/faults`. Runs with `make crash` (behind the slow marker).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from legguard.cli import app
from legguard.engine import Journal
from legguard.engine._venue_truth import EmulatorStateBooks, compare_venue
from legguard.fsm import Adopted

pytestmark = pytest.mark.slow

LEGGUARD = str(Path(sys.executable).with_name("legguard"))
QTY = Decimal("0.05")
ETH_START = Decimal(100)  # the emulator's starting spot balance
SPOT_STEP = Decimal("0.0001")  # ETH/USDT's quantity step: a flat package may keep less than this
WAIT = 30.0  # seconds: any single wait in the harness; only reached when something is wrong


# --- the emulator process -----------------------------------------------------------------------------


@dataclass
class Emulator:
    proc: subprocess.Popen[bytes]
    url: str

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/_emulator/state")
        return result

    def orders(self) -> list[dict[str, Any]]:
        s = self.state()
        return [{**o, "market": "spot"} for o in s["spot"]["orders"]] + [
            {**o, "market": "linear"} for o in s["linear"]["orders"]
        ]

    def until(self, what: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            state = self.state()
            if predicate(state):
                return state
            time.sleep(0.05)
        raise AssertionError(f"emulator never showed {what}: {json.dumps(self.state())[:2000]}")

    def resting(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Wait until both entry legs rest (spot and perp orders NEW); return them."""
        state = self.until(
            "both entry legs resting",
            lambda s: (
                any(o["status"] == "NEW" for o in s["spot"]["orders"])
                and any(o["status"] == "NEW" for o in s["linear"]["orders"])
            ),
        )
        spot = next(o for o in state["spot"]["orders"] if o["status"] == "NEW")
        perp = next(o for o in state["linear"]["orders"] if o["status"] == "NEW")
        return spot, perp

    def trade_through(self, market: str, order: dict[str, Any]) -> None:
        """Other participants take our resting order whole (the spot buy is grossed up above QTY for its fee)."""
        aggressor = "sell" if order["side"] == "BUY" else "buy"
        self.post("/_emulator/trade", {"market": market, "symbol": order["symbol"], "side": aggressor,
                                       "price": order["price"], "quantity": order["origQty"]})  # fmt: skip


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    proc = subprocess.Popen(
        [LEGGUARD, "emulator", "--port", "0", "--tls-port", "-1", "--tick", "3600", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield Emulator(proc, _banner_url(proc))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def _banner_url(proc: subprocess.Popen[bytes]) -> str:
    """The emulator's URL from its banner (it listens on a free port of its own choosing)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + WAIT
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            break
        seen += chunk
        if m := re.search(rb"REST \+ websockets\s+(http://127\.0\.0\.1:\d+)", seen):
            return m.group(1).decode()
    raise AssertionError(f"the emulator printed no URL: {seen.decode(errors='replace')}")


# --- the engine processes -----------------------------------------------------------------------------


@dataclass
class Crash:
    """One crashed run's world: its config, journal and logs."""

    emu: Emulator
    dir: Path

    @property
    def db(self) -> Path:
        return self.dir / "journal.db"

    def config(
        self, name: str, *, trade: bool, countdown: float = 10.0, heartbeat: float = 2.5, extra: str = ""
    ) -> Path:
        """`trade`: open packages (the premium trigger always fires, once); else only recover what exists."""
        path = self.dir / f"{name}.toml"
        path.write_text(f"""
[venue]
kind = "emulator"
url = "{self.emu.url}"

[[pairs]]
spot = "ETH/USDT"
perp = "ETH/USDT:USDT"
quantity = "{QTY}"

[strategy]
premium_threshold = "{"-1" if trade else "1"}"
cooldown = 3600

[engine]
min_spread = "-1"
max_book_age = 3600

[deadlines]
ack = 5.0
fill = 60.0
unwind = 20.0
leg = 60.0

[deadman]
countdown = {countdown}
heartbeat = {heartbeat}
{extra}
""")
        return path

    def start(
        self, *args: str, crash: str | None = None, name: str = "run", durable: str | None = None
    ) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("LEGGUARD_CRASH_AT", "LEGGUARD_DURABLE_AT")}
        if crash is not None:
            env["LEGGUARD_CRASH_AT"] = crash
        if durable is not None:
            env["LEGGUARD_DURABLE_AT"] = durable
        with (self.dir / f"{name}.log").open("a") as log:  # the child keeps its own descriptor
            return subprocess.Popen([LEGGUARD, *args], stdout=log, stderr=subprocess.STDOUT, text=True, env=env)

    def run(
        self, crash: str | None = None, *, name: str = "crashing", durable: str | None = None, **config: Any
    ) -> subprocess.Popen[str]:
        """`legguard run` that opens a package; with `crash`, it is expected to SIGKILL itself; with `durable`,
        it keeps a copy of its journal as of that point (see `power_loss`)."""
        cfg = self.config(name, trade=True, **config)
        return self.start("run", "--config", str(cfg), "--db", str(self.db), "--seconds", "60", crash=crash,
                          name=name, durable=durable)  # fmt: skip

    def power_loss(self) -> None:
        """After the SIGKILL: the journal goes back to the copy the run kept (`LEGGUARD_DURABLE_AT`), as if the
        machine had lost power and, under `durability = "process"`, every commit after the copy with it."""
        durable = Path(f"{self.db}.durable")
        assert durable.is_file(), f"the run kept no durable copy: {self.logs()}"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        durable.rename(self.db)

    def killed(self, proc: subprocess.Popen[str], point: str) -> None:
        try:
            code = proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"never reached crash point {point}: {self.logs()}") from None
        assert code == -signal.SIGKILL, f"exit {code}, expected SIGKILL at {point}: {self.logs()}"
        if point != "external":
            assert f"crash point {point}" in self.logs()

    def restart_run(self) -> dict[str, Any]:
        """`legguard run` again on the same journal: it recovers before anything else (opens nothing new)."""
        cfg = self.config("restart", trade=False)
        proc = self.start("run", "--config", str(cfg), "--db", str(self.db), "--seconds", "1", "--json",
                          name="restart")  # fmt: skip
        assert proc.wait(timeout=WAIT * 2) == 0, self.logs()
        return _last_json(self.dir / "restart.log")

    def recover(self, crash: str | None = None) -> subprocess.Popen[str]:
        cfg = self.config("recover", trade=False)
        return self.start("recover", "--config", str(cfg), "--db", str(self.db), "--json", crash=crash,
                          name="recover")  # fmt: skip

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.dir.glob("*.log")))

    def audit(self, *args: str) -> Result:
        """`legguard audit ...` on the journal, in this process (the same command, without the start-up)."""
        return CliRunner().invoke(app, ["audit", *args, "--db", str(self.db)])

    # --- the checks every restart must pass ---

    def packages(self) -> list[dict[str, Any]]:
        with Journal.open(self.db, readonly=True) as journal:
            return [p.to_dict() for p in journal.packages()]

    def assert_safe(self) -> dict[str, str]:
        """Everything the acceptance asks after a restart; returns package -> final state."""
        packages = self.packages()
        assert packages, "no package was ever opened"
        states = {p["package_id"]: p["state"] for p in packages}
        assert set(states.values()) <= {"hedged", "flat"}, states
        assert not any(p["unknown"] for p in packages), packages
        state = self.emu.state()
        # The venue holds exactly what the packages hold: perp position, and spot net of the start balance.
        perp = sum((Decimal(p["perp"]) for p in packages), Decimal(0))
        spot = sum((Decimal(p["spot"]) for p in packages), Decimal(0))
        assert Decimal(state["linear"]["positions"]["ETHUSDT"]) == perp, (state["linear"], packages)
        eth = state["spot"]["balances"]["ETH"]
        assert Decimal(eth["free"]) + Decimal(eth["locked"]) - ETH_START == spot, (eth, packages)
        # Delta-neutral to the spot step per package: the spot buy is grossed up for its fee paid in ETH.
        assert abs(spot + perp) < SPOT_STEP * len(packages), (spot, perp)
        for p in packages:
            if p["state"] == "flat":
                assert Decimal(p["perp"]) == 0 and abs(Decimal(p["spot"])) < SPOT_STEP, p
        # Nothing of ours still rests, and no client order id was used for two different orders.
        orders = self.emu.orders()
        ours = [o for o in orders if o["clientOrderId"].startswith("lg")]
        assert not [o for o in ours if o["status"] in ("NEW", "PARTIALLY_FILLED")], ours
        for market in ("spot", "linear"):
            ids = [o["clientOrderId"] for o in ours if o["market"] == market]
            assert len(ids) == len(set(ids)), ids
        intents = self.intents()
        for o in ours:
            intent = intents.get(o["clientOrderId"])
            assert intent is not None, f"{o['clientOrderId']} reached the venue but no intent was journaled first"
            assert (intent["side"], Decimal(intent["amount"])) == (o["side"].lower(), Decimal(o["origQty"])), (
                intent,
                o,
            )
        # The venue-truth oracle over the emulator's own books: every order, balance and position.
        with Journal.open(self.db, readonly=True) as journal:
            truth = compare_venue(EmulatorStateBooks(self.emu.state()), journal)
        assert truth.ok, truth.problems
        verify = self.audit("verify")
        assert verify.exit_code == 0 and verify.stdout.startswith("OK"), verify.output
        # The timeline an operator reads shows the recovery.
        shown = self.audit("show", "P000001")
        assert shown.exit_code == 0 and "recovery" in shown.stdout, shown.output
        return states

    def intents(self) -> dict[str, dict[str, Any]]:
        """Every order the journal accounts for: its intents, and the orders recovery adopted from the venue
        after a crash lost the commits that journaled them (their intent comes with the `adopted` event)."""
        with Journal.open(self.db, readonly=True) as journal:
            out = {i.client_order_id: i.to_dict() for pid in journal.package_ids() for i in journal.intents(pid)}
            for pid in journal.package_ids():
                for event in journal.events(pid):
                    if isinstance(event, Adopted):
                        out[event.intent.client_order_id] = event.intent.to_dict()
            return out

    def recovery_steps(self, package_id: str = "P000001") -> list[str]:
        with Journal.open(self.db, readonly=True) as journal:
            return [r.payload["step"] for r in journal.timeline(package_id) if r.kind == "recovery"]


def _last_json(log: Path) -> dict[str, Any]:
    text = log.read_text()
    start = text.rindex("\n{\n") + 1 if "\n{\n" in text else text.index("{")
    result: dict[str, Any] = json.loads(text[start:])
    return result


@pytest.fixture
def crash(emulator: Emulator, tmp_path: Path) -> Crash:
    return Crash(emulator, tmp_path)


# --- one test per crash point -------------------------------------------------------------------------


def test_after_intent_nothing_was_sent(crash: Crash) -> None:
    crash.killed(crash.run("after_intent"), "after_intent")
    assert crash.emu.orders() == []  # journaled, never sent

    summary = crash.restart_run()

    assert summary["recovery"]["at_restart"] == {"P000001": "dispatched"}
    assert crash.assert_safe() == {"P000001": "flat"}
    answers = summary["recovery"]["answers"]["P000001"]
    assert all(a.startswith("rejected filled 0 (not found") for a in answers.values()), answers
    # Restarted within the entries' recvWindow: recovery waited it out before believing "not found".
    steps = crash.recovery_steps()
    assert [s for s in steps if s != "not_found_yet"] == ["queried", "resolved"], steps


def test_group_committed_nothing_of_the_group_was_sent(crash: Crash) -> None:
    """Killed between a group commit and its first released effect: the package's creation and dispatch (one
    transaction) are journaled, no order reached the venue; recovery settles it flat."""
    crash.killed(crash.run("group_committed"), "group_committed")
    assert crash.emu.orders() == []  # committed, never released
    with Journal.open(crash.db, readonly=True) as journal:
        kinds = [r.kind for r in journal.timeline("P000001")]
    assert kinds[:2] == ["package_created", "event"] and "intent" in kinds, kinds

    summary = crash.restart_run()

    assert summary["recovery"]["at_restart"] == {"P000001": "dispatched"}
    assert crash.assert_safe() == {"P000001": "flat"}


def test_after_send_before_the_acknowledgement(crash: Crash) -> None:
    crash.killed(crash.run("after_send"), "after_send")

    summary = crash.restart_run()

    assert crash.assert_safe() == {"P000001": "flat"}
    assert summary["recovery"]["final"] == {"P000001": "flat"}
    # Whatever reached the venue was found by its client id and cancelled; nothing was sent twice.
    assert {o["status"] for o in crash.emu.orders()} <= {"CANCELED"}


def test_one_leg_filled_the_other_resting(crash: Crash) -> None:
    proc = crash.run("one_leg_filled")
    spot, _perp = crash.emu.resting()
    crash.emu.trade_through("spot", spot)
    crash.killed(proc, "one_leg_filled")

    crash.restart_run()

    assert crash.assert_safe() == {"P000001": "flat"}  # perp cancelled, the spot bought was sold
    assert "queried" in crash.recovery_steps()


def test_one_leg_filled_and_the_other_filled_while_down_is_hedged(crash: Crash) -> None:
    proc = crash.run("one_leg_filled")
    spot, perp = crash.emu.resting()
    crash.emu.trade_through("spot", spot)
    crash.killed(proc, "one_leg_filled")
    crash.emu.trade_through("linear", perp)  # the resting perp filled while nobody was watching

    crash.restart_run()

    assert crash.assert_safe() == {"P000001": "hedged"}
    assert Decimal(crash.emu.state()["linear"]["positions"]["ETHUSDT"]) == -QTY


def _break_the_perp_leg(emu: Emulator) -> None:
    """The spot leg part-fills on arrival; the perp leg is refused post-only (Binance -5022)."""
    emu.post("/_emulator/faults", {"fault": "partial_fill", "market": "spot", "ratio": 0.6})
    emu.post("/_emulator/faults", {"fault": "reject", "code": -5022, "market": "linear", "path": "/order",
                                   "method": "POST"})  # fmt: skip


def test_one_leg_filled_the_other_rejected_before_the_unwind(crash: Crash) -> None:
    _break_the_perp_leg(crash.emu)
    crash.killed(crash.run("one_leg_rejected"), "one_leg_rejected")
    assert not [o for o in crash.emu.orders() if "-SU" in o["clientOrderId"]]  # no unwind order left

    summary = crash.restart_run()

    assert summary["recovery"]["at_restart"] == {"P000001": "unwinding"}
    assert crash.assert_safe() == {"P000001": "flat"}
    # The spot bought was sold by an unwind order; the journaled-but-unsent attempt was never reused.
    unwinds = [o for o in crash.emu.orders() if "-SU" in o["clientOrderId"]]
    assert [o["status"] for o in unwinds] == ["FILLED"]


def test_a_cancel_written_on_the_answer_it_was_armed_for_before_that_answer_was_stepped(crash: Crash) -> None:
    # The perp is refused while the spot's order is still on its way (held 200 ms): the spot's cancel is armed
    # (`cancel_armed`) and written as soon as its answer (resting, 60 % filled) is read. The engine dies
    # before that answer is stepped: the journal holds the armed cancel, not the answer.
    _break_the_perp_leg(crash.emu)
    crash.emu.post("/_emulator/faults", {"fault": "delay", "delay_ms": 200, "market": "spot", "path": "/order",
                                         "method": "POST"})  # fmt: skip
    # The spot's execution reports trail its REST answer: that answer is the first word on the order (else the
    # stream's report decides the cancel in its own step, as it may on a loaded machine, and nothing is armed).
    crash.emu.post("/_emulator/lag", {"user_stream_ms": 500})
    crash.killed(crash.run("cancel_on_answer"), "cancel_on_answer")
    (spot,) = [o for o in crash.emu.orders() if o["clientOrderId"].endswith("-SE0")]
    assert spot["status"] == "CANCELED" and Decimal(spot["executedQty"]) > 0  # the cancel reached the venue

    summary = crash.restart_run()

    assert crash.assert_safe() == {"P000001": "flat"}  # the spot it bought before the cancel was sold
    assert summary["recovery"]["answers"]["P000001"][spot["clientOrderId"]].startswith("canceled")


def test_mid_unwind(crash: Crash) -> None:
    _break_the_perp_leg(crash.emu)
    crash.killed(crash.run("mid_unwind"), "mid_unwind")
    sent = [o for o in crash.emu.orders() if "-SU" in o["clientOrderId"]]
    assert [o["status"] for o in sent] == ["FILLED"]  # the unwind reached the venue; its answer was lost

    summary = crash.restart_run()

    assert crash.assert_safe() == {"P000001": "flat"}
    assert [o["clientOrderId"] for o in crash.emu.orders() if "-SU" in o["clientOrderId"]] == [
        sent[0]["clientOrderId"]
    ]  # found, not sent again
    assert summary["recovery"]["answers"]["P000001"][sent[0]["clientOrderId"]].startswith("closed")


def test_mid_unwind_when_only_the_order_stream_answers_the_unwind(crash: Crash) -> None:
    # The unwind reaches the venue and fills, and its own answer never comes (ack_timeout on the market order
    # only): the order stream's fill report is the one answer, and the engine dies before processing it. (The
    # stream's report leaves the venue before any answer does; once the package is flat on it, its request
    # task is cancelled, so a crash point only on the request's answer was never passed on this path.)
    _break_the_perp_leg(crash.emu)
    crash.emu.post("/_emulator/faults", {"fault": "ack_timeout", "market": "spot", "path": "/order",
                                         "method": "POST", "order_type": "MARKET"})  # fmt: skip
    crash.killed(crash.run("mid_unwind"), "mid_unwind")
    (sent,) = [o for o in crash.emu.orders() if "-SU" in o["clientOrderId"]]
    assert sent["status"] == "FILLED"

    summary = crash.restart_run()

    assert crash.assert_safe() == {"P000001": "flat"}
    assert [o["clientOrderId"] for o in crash.emu.orders() if "-SU" in o["clientOrderId"]] == [
        sent["clientOrderId"]
    ]  # found, not sent again
    assert summary["recovery"]["answers"]["P000001"][sent["clientOrderId"]].startswith("closed")


def test_a_power_loss_that_loses_the_unwinds_commits_never_sends_its_id_again(crash: Crash) -> None:
    # Issue 10, defect 5. The journal keeps everything up to the dispatch; the commits after it (the spot's
    # fill, the perp's rejection, the unwind's intent) are lost with the power. The unwind had reached the
    # venue and filled; the venue accepts its id again once it is closed, as Binance does.
    _break_the_perp_leg(crash.emu)
    crash.killed(crash.run("mid_unwind", durable="after_intent:1"), "mid_unwind")
    (sent,) = [o for o in crash.emu.orders() if "-SU" in o["clientOrderId"]]
    assert sent["status"] == "FILLED"
    crash.power_loss()

    summary = crash.restart_run()

    # Venue truth: the spot was sold once, no id names two orders (assert_safe), and the lost unwind was
    # found by its id and adopted rather than sent again.
    assert crash.assert_safe() == {"P000001": "flat"}
    assert [o["clientOrderId"] for o in crash.emu.orders() if "-SU" in o["clientOrderId"]] == [sent["clientOrderId"]]
    assert summary["recovery"]["lost_orders"] == {sent["clientOrderId"]: "P000001"}
    assert "lost_order_found" in crash.recovery_steps()


def test_hedged_stays_hedged(crash: Crash) -> None:
    proc = crash.run("hedged")
    spot, perp = crash.emu.resting()
    crash.emu.trade_through("spot", spot)
    crash.emu.trade_through("linear", perp)
    crash.killed(proc, "hedged")

    crash.restart_run()

    assert crash.assert_safe() == {"P000001": "hedged"}
    assert crash.recovery_steps() == ["queried", "perp_verified", "resolved"]


def test_hedged_with_the_perp_liquidated_while_down_is_unwound(crash: Crash) -> None:
    proc = crash.run("hedged")
    spot, perp = crash.emu.resting()
    crash.emu.trade_through("spot", spot)
    crash.emu.trade_through("linear", perp)
    crash.killed(proc, "hedged")
    crash.emu.post("/_emulator/liquidate", {"symbol": "ETHUSDT", "quantity": "0.02"})

    summary = crash.restart_run()

    assert summary["recovery"]["reduced"] == {"P000001": "0.02"}
    assert crash.assert_safe() == {"P000001": "flat"}
    assert "perp_reduced_while_down" in crash.recovery_steps()


def test_mid_exit_the_recovery_escalates_and_ends_flat(crash: Crash) -> None:
    """SIGKILL while the passive exit's limits rest (issue 12): recovery finds them by client id, escalates
    into the kill switch (cancel, then market orders for what is held) and ends flat."""
    proc = crash.run("mid_exit", extra="[exit]\nbasis_below = false\nmax_hold = 1\ndeadline = 60")
    spot, perp = crash.emu.resting()
    crash.emu.trade_through("spot", spot)
    crash.emu.trade_through("linear", perp)
    crash.killed(proc, "mid_exit")
    assert [o for o in crash.emu.orders() if "X0" in o["clientOrderId"]]  # an exit limit reached the venue

    summary = crash.restart_run()

    assert summary["recovery"]["at_restart"] == {"P000001": "unwinding"}
    assert crash.assert_safe() == {"P000001": "flat"}
    exits = [o for o in crash.emu.orders() if "X0" in o["clientOrderId"]]
    assert exits and all(o["status"] in ("CANCELED", "FILLED", "EXPIRED") for o in exits), exits


def test_during_recovery(crash: Crash) -> None:
    proc = crash.run("one_leg_filled")
    spot, _perp = crash.emu.resting()
    crash.emu.trade_through("spot", spot)
    crash.killed(proc, "one_leg_filled")
    crash.killed(crash.recover("during_recovery"), "during_recovery")

    final = crash.recover()

    assert final.wait(timeout=WAIT * 2) == 0, crash.logs()
    assert crash.assert_safe() == {"P000001": "flat"}
    assert crash.recovery_steps().count("queried") == 2  # asked once per recovery attempt


def test_dead_mans_switch_cancels_resting_perp_entries_and_recovery_cancels_the_spot(crash: Crash) -> None:
    proc = crash.run(countdown=2.0, heartbeat=0.5)
    crash.emu.resting()
    crash.emu.until("the countdown armed", lambda s: s["countdowns"] == ["ETHUSDT"])
    proc.send_signal(signal.SIGKILL)  # the engine dies: nobody heartbeats any more
    crash.killed(proc, "external")

    state = crash.emu.until("the perp entry cancelled by the venue",
                            lambda s: s["linear"]["orders"][0]["status"] == "CANCELED")  # fmt: skip
    assert state["spot"]["orders"][0]["status"] == "NEW"  # spot has no such switch: still resting
    crash.restart_run()

    assert crash.assert_safe() == {"P000001": "flat"}
    assert crash.emu.state()["spot"]["orders"][0]["status"] == "CANCELED"
