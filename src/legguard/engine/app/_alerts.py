"""Webhook alerts: halt, resume, orphan, unwind overdue, unknown exposure, unsafe recovery, venue outage and
its end, POSTed as JSON (`json`, or the body shape `slack`, `discord`, `telegram` expect).

The engine only ever calls `emit()`, which is synchronous and never blocks: alerts go into a bounded queue
(the oldest are dropped when it is full) that one sender task drains, with a timeout per POST. A slow, hanging
or failing receiver therefore costs the engine nothing. Repeats of the same alert (kind + subject) within
`dedupe` seconds are counted, not sent; at most `rate` alerts go out per minute. Halts and resumes are never
deduplicated: every one alerts.

The webhook URL usually embeds a token (Slack, Discord, Telegram): it is never logged, only its host.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from legguard.adapters._redact import SECRETS, scrub
from legguard.engine._observe import EngineObserver, HaltSource
from legguard.fsm import State

from ._config import AlertsConfig

if TYPE_CHECKING:
    from legguard.engine._handle import PackageHandle
    from legguard.engine._recovery import RecoveryReport
    from legguard.fsm import Transitioned

log = logging.getLogger("legguard.alerts")

NEVER_DEDUPED = frozenset({"halt", "resume"})
DISCORD_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class Alert:
    # halt, resume, orphan, unwind_overdue, unknown_exposure, unsafe_recovery, venue_outage, venue_restored, margin,
    # margin_blind, margin_seeing
    kind: str
    severity: str  # critical | warning | info
    title: str
    detail: str = ""
    subject: str = ""  # what it is about (a pair, a package): part of the dedupe key
    wall_time: float = field(default_factory=time.time)

    def text(self) -> str:
        text = f"[legguard {self.severity.upper()}] {self.title}" + (f" — {self.detail}" if self.detail else "")
        return scrub(text, SECRETS, limit=None)


def body(alert: Alert, fmt: str, *, journal_id: str = "", chat_id: str | None = None) -> dict[str, Any]:
    """The POST body for `fmt`."""
    text = alert.text() + (f" (journal {journal_id})" if journal_id else "")
    if fmt == "slack":
        return {"text": text}
    if fmt == "discord":
        return {"content": text[:DISCORD_LIMIT]}
    if fmt == "telegram":
        return {"chat_id": chat_id, "text": text, "disable_web_page_preview": True}
    return {
        "source": "legguard",
        "kind": alert.kind,
        "severity": alert.severity,
        "title": scrub(alert.title, SECRETS, limit=None),
        "detail": scrub(alert.detail, SECRETS, limit=None),
        "subject": alert.subject,
        "journal_id": journal_id,
        "wall_time": alert.wall_time,
        "text": text,
    }


# Sender: (url, JSON body) -> HTTP status. Raises OSError / trio errors on transport failure.
Sender = Callable[[str, bytes], Awaitable[int]]


async def post_json(url: str, payload: bytes) -> int:
    """A minimal HTTP/1.1 POST over trio (http or https), returning the status code."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream
    if https:
        stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=ssl.create_default_context())
    else:
        stream = await trio.open_tcp_stream(host, port)
    async with stream:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc.rsplit('@', 1)[-1]}\r\nUser-Agent: legguard\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        await stream.send_all(head.encode() + payload)
        answer = b""
        while b"\r\n" not in answer:
            data = await stream.receive_some(4096)
            if not data:
                raise OSError("connection closed before a status line")
            answer += data
            if len(answer) > 8192:
                break
    line = answer.split(b"\r\n", 1)[0].split()
    if len(line) < 2 or not line[0].startswith(b"HTTP/") or not line[1].isdigit():
        raise OSError("answer is not HTTP")
    return int(line[1])


class Alerter(EngineObserver):
    """Alerts from the engine's observer hooks, sent by `run()` (a task in the engine's nursery)."""

    def __init__(
        self,
        config: AlertsConfig,
        *,
        journal_id: str = "",
        send: Sender = post_json,
        count: Callable[[str, str], None] | None = None,  # (kind, outcome) -> metrics
    ) -> None:
        if config.webhook_url is None:
            raise ValueError("alerts.webhook_url is not set")
        self.config = config
        self.url = config.webhook_url
        self.host = urllib.parse.urlsplit(self.url).hostname or "?"
        self.journal_id = journal_id
        self.send = send
        self.count = count
        self.queue: deque[Alert] = deque()
        self.sent: list[Alert] = []  # the last few delivered (status, tests)
        self.dropped = self.deduped = self.failed = 0
        self._last: dict[tuple[str, str], float] = {}  # dedupe key -> when last queued
        self._sent_at: deque[float] = deque()  # for the per-minute rate
        self._wake = trio.Event()
        self._busy = False
        self._delivered = 0
        self._progress = trio.Event()

    def _count(self, kind: str, outcome: str) -> None:
        if self.count is not None:
            self.count(kind, outcome)

    # --- producing (synchronous, never blocks) --------------------------------------------------------

    def emit(self, alert: Alert) -> bool:
        """Queue `alert`; False if it was deduplicated."""
        now = trio.current_time()
        if alert.kind not in NEVER_DEDUPED:
            key = (alert.kind, alert.subject)
            last = self._last.get(key)
            if last is not None and now - last < self.config.dedupe:
                self.deduped += 1
                self._count(alert.kind, "deduped")
                return False
            self._last[key] = now
            if len(self._last) > 1000:  # forget the oldest keys
                for k in sorted(self._last, key=self._last.__getitem__)[:500]:
                    del self._last[k]
        if len(self.queue) >= self.config.queue:
            old = self.queue.popleft()
            self.dropped += 1
            self._count(old.kind, "dropped")
            log.warning("alert queue full: dropped the oldest (%s)", old.kind)
        self.queue.append(alert)
        self._wake.set()
        return True

    # --- sending -------------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            if not self.queue:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            await self._rate_slot()
            alert = self.queue.popleft()
            self._busy = True
            try:
                await self._deliver(alert)
            finally:
                self._busy = False
                self._progress.set()

    async def _rate_slot(self) -> None:
        while True:
            now = trio.current_time()
            while self._sent_at and self._sent_at[0] <= now - 60.0:
                self._sent_at.popleft()
            if len(self._sent_at) < self.config.rate:
                self._sent_at.append(now)
                return
            await trio.sleep(self._sent_at[0] + 60.0 - now)

    async def _deliver(self, alert: Alert) -> None:
        payload = json.dumps(
            body(alert, self.config.format, journal_id=self.journal_id, chat_id=self.config.chat_id)
        ).encode()
        status: int | None = None
        error = ""
        with trio.move_on_after(self.config.timeout) as scope:
            try:
                status = await self.send(self.url, payload)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                error = type(exc).__name__  # the message may carry the URL
        if scope.cancelled_caught:
            error = f"no answer within {self.config.timeout:g}s"
        if status is not None and 200 <= status < 300:
            self.sent.append(alert)
            self._delivered += 1
            del self.sent[:-20]
            self._count(alert.kind, "sent")
            return
        self.failed += 1
        self._count(alert.kind, "failed")
        why = error or f"HTTP {status}"
        log.warning("alert %s not delivered to webhook host %s: %s", alert.kind, self.host, why)

    async def drain(self) -> None:
        """Wait (at most one POST timeout per queued alert, and `timeout` overall) until the queue is empty."""
        with trio.move_on_after(self.config.timeout):
            while self.queue or self._busy:
                self._progress = trio.Event()
                await self._progress.wait()

    def counts(self) -> dict[str, int]:
        return {
            "sent": self._delivered,
            "failed": self.failed,
            "dropped": self.dropped,
            "deduped": self.deduped,
            "queued": len(self.queue),
        }

    # --- the engine's hooks --------------------------------------------------------------------------

    def on_halt(self, reason: str, source: HaltSource) -> None:
        self.emit(Alert("halt", "critical", f"engine HALTED ({source.value})", reason))

    def on_resume(self, reason: str, automatic: bool) -> None:
        self.emit(
            Alert(
                "resume",
                "warning" if automatic else "info",
                "engine resumed" + (" automatically" if automatic else ""),
                reason,
            )
        )

    def on_transition(self, handle: PackageHandle, t: Transitioned, now: float) -> None:
        if t.dest is State.ORPHANED:
            pair = handle.core.plan.spot.symbol
            self.emit(
                Alert(
                    "orphan",
                    "warning",
                    f"orphaned package on {pair}: kill switch engaged",
                    f"{handle.package_id} {t.source.value} --{t.trigger.value}--> orphaned",
                    subject=pair,
                )
            )

    def on_unwind_overdue(self, package_id: str) -> None:
        self.emit(
            Alert(
                "unwind_overdue",
                "critical",
                f"{package_id} still unwinding after the unwind deadline",
                "the engine halted new packages and keeps trying",
                subject=package_id,
            )
        )

    def on_unknown_exposure(self, package_id: str, detail: str) -> None:
        self.emit(Alert("unknown_exposure", "critical", f"{package_id}: exposure unknown", detail, subject=package_id))

    def on_venue_health(self, healthy: bool, detail: str) -> None:
        if healthy:
            self.emit(Alert("venue_restored", "info", "venue back", detail))
        else:
            self.emit(Alert("venue_outage", "critical", "venue outage", detail))

    def on_margin(self, event: str, level: str, detail: str) -> None:
        if event == "blind":
            self.emit(Alert("margin_blind", "critical", "margin guard blind: the perp account cannot be read", detail))
        elif event == "seeing":
            self.emit(Alert("margin_seeing", "info", "margin guard reads the perp account again", detail))
        elif level == "act":
            self.emit(Alert("margin", "critical", "margin headroom below the act level: closing hedges", detail))
        elif level == "warn":
            self.emit(Alert("margin", "warning", "margin headroom below the warn level", detail))
        else:
            self.emit(Alert("margin", "info", "margin headroom back above the warn level", detail))

    def on_recovery(self, report: RecoveryReport) -> None:
        if report.ok:
            return
        detail = json.dumps(report.unsafe) if report.unsafe else "unexplained positions or unverified hedges"
        self.emit(Alert("unsafe_recovery", "critical", "recovery left something unsafe or unexplained", detail))
