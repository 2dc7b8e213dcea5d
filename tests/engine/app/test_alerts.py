"""Webhook alerts against an in-process HTTP receiver on loopback (virtual time): bodies in each format, a
hanging receiver and a failing one never delay whoever emits, the queue is bounded (oldest dropped), repeats
are deduplicated (never halts and resumes), and the rate limit holds."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from trio.testing import MockClock

from legguard.engine._observe import HaltSource
from legguard.engine.app._alerts import Alert, Alerter, body, post_json
from legguard.engine.app._config import AlertsConfig, parse_config
from legguard.engine.app._runner import RunOptions, RunStatus, run_engine


@dataclass
class Receiver:
    mode: str = "ok"  # ok | fail (HTTP 500) | hang (reads, never answers)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/T0KEN-in-the-path"

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += await stream.receive_some(4096)
        self.paths.append(head.split(b" ")[1].decode())
        self.bodies.append(json.loads(rest))
        if self.mode == "hang":
            await trio.sleep_forever()
        status = b"200 OK" if self.mode == "ok" else b"500 Internal Server Error"
        await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, r.handle, 0, host="127.0.0.1"))
        r.port = listeners[0].socket.getsockname()[1]
        yield r
        nursery.cancel_scope.cancel()


def alerter(receiver: Receiver, **config: Any) -> Alerter:
    return Alerter(AlertsConfig(webhook_url=receiver.url, **config), journal_id="ab12")


async def run_until_idle(a: Alerter, nursery: trio.Nursery, seconds: float = 600.0) -> None:
    nursery.start_soon(a.run)
    await trio.sleep(seconds)


async def test_json_body_on_halt_and_resume(autojump_clock: MockClock, receiver: Receiver) -> None:
    a = alerter(receiver)
    async with trio.open_nursery() as nursery:
        a.on_halt("circuit breaker: 6 orphan events within 30s", HaltSource.BREAKER)
        a.on_resume("circuit breaker cool-off of 60s passed", True)
        await run_until_idle(a, nursery, 5)
        nursery.cancel_scope.cancel()

    assert [b["kind"] for b in receiver.bodies] == ["halt", "resume"]
    halt = receiver.bodies[0]
    assert halt["severity"] == "critical" and halt["journal_id"] == "ab12"
    assert halt["detail"] == "circuit breaker: 6 orphan events within 30s"
    assert receiver.paths == ["/hooks/T0KEN-in-the-path"] * 2
    assert a.counts()["sent"] == 2


@pytest.mark.parametrize(
    ("fmt", "key"), [("slack", "text"), ("discord", "content"), ("telegram", "text")]
)  # fmt: skip
async def test_chat_formats(autojump_clock: MockClock, receiver: Receiver, fmt: str, key: str) -> None:
    a = alerter(receiver, format=fmt, chat_id="42")
    async with trio.open_nursery() as nursery:
        a.on_venue_health(False, "order stream dropped")
        await run_until_idle(a, nursery, 5)
        nursery.cancel_scope.cancel()

    [sent] = receiver.bodies
    assert sent[key].startswith("[legguard CRITICAL] venue outage — order stream dropped")
    if fmt == "telegram":
        assert sent["chat_id"] == "42"


async def test_a_hanging_receiver_never_delays_the_emitter(autojump_clock: MockClock, receiver: Receiver) -> None:
    receiver.mode = "hang"
    a = alerter(receiver, timeout=2.0, queue=5, dedupe=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        await trio.lowlevel.checkpoint()
        before = trio.current_time()
        for i in range(50):  # emit is synchronous: nothing here can wait for the receiver
            a.emit(Alert("orphan", "warning", f"orphan {i}", subject=f"pair{i}"))
        assert trio.current_time() == before
        assert len(a.queue) <= 5
        await trio.sleep(60)
        nursery.cancel_scope.cancel()

    counts = a.counts()
    # one in flight when the burst came, five kept, the rest dropped oldest-first; each try timed out
    assert counts["dropped"] >= 44
    assert counts["failed"] >= 5 and counts["sent"] == 0
    assert receiver.bodies[-1]["title"] == "orphan 49"  # the newest survived


async def test_a_failing_receiver_is_counted_and_the_next_alert_still_goes(
    autojump_clock: MockClock, receiver: Receiver
) -> None:
    receiver.mode = "fail"
    a = alerter(receiver)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        a.on_halt("first", HaltSource.OPERATOR)
        await trio.sleep(1)
        receiver.mode = "ok"
        a.on_resume("second", False)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()

    assert [b["detail"] for b in receiver.bodies] == ["first", "second"]
    assert a.counts()["failed"] == 1 and a.counts()["sent"] == 1


async def test_repeats_are_deduplicated_but_halts_never(autojump_clock: MockClock, receiver: Receiver) -> None:
    a = alerter(receiver, dedupe=60.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        for _ in range(3):
            a.emit(Alert("orphan", "warning", "orphaned package on ETH/USDT", subject="ETH/USDT"))
            a.on_halt("breaker", HaltSource.BREAKER)
        a.emit(Alert("orphan", "warning", "orphaned package on BTC/USDT", subject="BTC/USDT"))
        await trio.sleep(61)
        a.emit(Alert("orphan", "warning", "orphaned package on ETH/USDT", subject="ETH/USDT"))  # window passed
        await trio.sleep(5)
        nursery.cancel_scope.cancel()

    kinds = [(b["kind"], b["subject"]) for b in receiver.bodies]
    assert kinds.count(("halt", "")) == 3
    assert kinds.count(("orphan", "ETH/USDT")) == 2
    assert kinds.count(("orphan", "BTC/USDT")) == 1
    assert a.counts()["deduped"] == 2


async def test_rate_limit_spreads_alerts_over_minutes(autojump_clock: MockClock, receiver: Receiver) -> None:
    a = alerter(receiver, rate=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        start = trio.current_time()
        for i in range(3):
            a.on_halt(f"halt {i}", HaltSource.OPERATOR)
        await trio.sleep(30)
        assert len(receiver.bodies) == 2
        await trio.sleep(31)
        nursery.cancel_scope.cancel()

    assert len(receiver.bodies) == 3
    assert trio.current_time() - start >= 60


async def test_post_json_reports_unreachable_receivers(autojump_clock: MockClock) -> None:
    with pytest.raises(OSError):
        await post_json("http://127.0.0.1:1/x", b"{}")


def test_the_webhook_url_never_shows_in_the_config_repr() -> None:
    config = AlertsConfig(webhook_url="https://hooks.slack.com/services/T000/B000/SECRETXYZ")
    assert "SECRETXYZ" not in repr(config)


async def test_a_run_with_a_hanging_receiver_trades_halts_and_stops_on_time(
    autojump_clock: MockClock, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.mode = "hang"
    config = parse_config({
        "venue": {"kind": "sim", "seed": 7},
        "pairs": [{"spot": "ETH/USDT", "perp": "ETH/USDT:USDT", "quantity": "0.05"}],
        "breaker": {"max_orphans": 50},
        "alerts": {"webhook_url": receiver.url, "timeout": 3.0},
    })  # fmt: skip
    status = RunStatus()
    report: dict[str, Any] = {}

    async def run() -> None:
        report.update(await run_engine(config, tmp_path / "j.db", None, status, options=RunOptions(control=False)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await status.ready.wait()
        assert status.rpc is not None and status.alerter is not None
        for i in range(5):
            status.rpc.halt(f"halt {i}")
            status.rpc.resume(f"resume {i}")
        await trio.sleep(5)
        assert status.engine is not None
        opened = len(status.engine.handles)
        stopping = trio.current_time()
        status.stop.set()
    took = trio.current_time() - stopping

    assert opened > 0  # the engine kept trading while every POST hung
    assert took <= config.engine.deadlines.ack * 2 + config.engine.deadlines.unwind + 3.0 + 0.5
    assert report["alerts"]["sent"] == 0 and report["alerts"]["failed"] >= 1
    assert receiver.bodies and receiver.bodies[0]["kind"] == "halt"


async def test_unsafe_recovery_alerts_and_a_safe_one_does_not(autojump_clock: MockClock, receiver: Receiver) -> None:
    from types import SimpleNamespace

    a = alerter(receiver)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        a.on_recovery(SimpleNamespace(ok=True, unsafe={}))  # type: ignore[arg-type]
        a.on_recovery(SimpleNamespace(ok=False, unsafe={"P000007": "orphaned"}))  # type: ignore[arg-type]
        a.on_unwind_overdue("P000008")
        await trio.sleep(5)
        nursery.cancel_scope.cancel()

    assert [(b["kind"], b["severity"]) for b in receiver.bodies] == [
        ("unsafe_recovery", "critical"),
        ("unwind_overdue", "critical"),
    ]
    assert receiver.bodies[0]["detail"] == '{"P000007": "orphaned"}'


async def test_the_margin_guard_alerts_its_levels_and_a_blind_streak(
    autojump_clock: MockClock, receiver: Receiver
) -> None:
    a = alerter(receiver, dedupe=0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        a.on_margin("level", "warn", "headroom 0.5500 (was ok; warn below 0.6, act below 0.5)")
        a.on_margin("level", "act", "headroom 0.4000 (was warn; warn below 0.6, act below 0.5)")
        a.on_margin("blind", "act", "reading the perp account failed: margin: venue unavailable (503)")
        a.on_margin("seeing", "act", "reading the perp account again after 3 failed read(s), 15 s")
        a.on_margin("level", "ok", "headroom 0.9000 (was act; warn below 0.6, act below 0.5)")
        await trio.sleep(60)
        nursery.cancel_scope.cancel()

    assert [(b["kind"], b["severity"]) for b in receiver.bodies] == [
        ("margin", "warning"),
        ("margin", "critical"),
        ("margin_blind", "critical"),
        ("margin_seeing", "info"),
        ("margin", "info"),
    ]
    assert receiver.bodies[2]["detail"] == "reading the perp account failed: margin: venue unavailable (503)"


def test_registered_secrets_never_reach_an_alert_body() -> None:
    from legguard.adapters._redact import SECRETS

    SECRETS.add("k3y-material")
    try:
        alert = Alert("venue_outage", "critical", "venue outage", "GET /api?apiKey=k3y-material failed")
        shapes = [body(alert, fmt, chat_id="1") for fmt in ("json", "slack", "discord", "telegram")]
    finally:
        SECRETS.discard("k3y-material")
    assert all("k3y-material" not in json.dumps(shape) for shape in shapes)
