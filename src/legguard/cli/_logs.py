"""Logging for a service: human lines on stderr (UTC time, level, logger), JSON lines in `--log-file` rotated by
size, one `--log-level`. Every handler carries the secret guard (`LogScrubber`): registered credentials and the
alert webhook URL never reach a sink."""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Any

from legguard.adapters._redact import LogScrubber

LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5
_OURS = "legguard-service"  # handler name: set up once per process, replaced on a second call


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return dt.datetime.fromtimestamp(record.created, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the moment: under `run`'s live dashboard that is rich's proxy,
    which prints the line above the dashboard instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when there is a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(
    level: str = "info",
    log_file: Path | None = None,
    *,
    stream: Any = None,
    max_bytes: int = LOG_FILE_BYTES,
    backups: int = LOG_FILE_BACKUPS,
) -> None:
    """Configure the `legguard` logger (ccxt's wire log is a child of it) for a long-running process."""
    numeric = getattr(logging, level.upper())
    scrubber = LogScrubber()
    handlers: list[logging.Handler] = []
    human = logging.StreamHandler(stream) if stream is not None else _StderrHandler(sys.stderr)
    human.setFormatter(_UtcFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handlers.append(human)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        rotating.setFormatter(JsonFormatter())
        handlers.append(rotating)
    logger = logging.getLogger("legguard")
    teardown_logging()
    logger.setLevel(numeric)
    for h in handlers:
        h.set_name(_OURS)
        h.addFilter(scrubber)
        logger.addHandler(h)


def teardown_logging() -> None:
    """Remove (and close) what `setup_logging` installed."""
    logger = logging.getLogger("legguard")
    for old in [h for h in logger.handlers if h.get_name() == _OURS]:
        logger.removeHandler(old)
        old.close()
