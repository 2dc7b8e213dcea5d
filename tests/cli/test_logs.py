"""Service logging: human lines with UTC time and level on stderr, JSON lines in the log file rotated by size,
the level switch, and the secret guard on both sinks (messages and tracebacks)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from legguard.adapters._redact import SECRETS
from legguard.cli._logs import setup_logging, teardown_logging

SECRET = "hunter2-api-secret-value"


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[tuple[io.StringIO, Path]]:
    stream, path = io.StringIO(), tmp_path / "logs" / "legguard.jsonl"
    SECRETS.add(SECRET)
    setup_logging("info", path, stream=stream, max_bytes=2000, backups=2)
    yield stream, path
    teardown_logging()
    SECRETS.discard(SECRET)
    logging.getLogger("legguard").setLevel(logging.NOTSET)


def test_human_line_and_json_line(sinks: tuple[io.StringIO, Path]) -> None:
    stream, path = sinks
    logging.getLogger("legguard.engine").warning("engine HALTED: %s", "circuit breaker")
    logging.getLogger("legguard.engine").debug("not at info level")

    line = stream.getvalue().strip()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING legguard\.engine: engine HALTED: circuit breaker", line
    )
    [record] = [json.loads(x) for x in path.read_text().splitlines()]
    assert record["level"] == "warning" and record["logger"] == "legguard.engine"
    assert record["msg"] == "engine HALTED: circuit breaker" and record["ts"].endswith("+00:00")


def test_secrets_never_reach_either_sink(sinks: tuple[io.StringIO, Path]) -> None:
    stream, path = sinks
    log = logging.getLogger("legguard.adapters.ccxt.wire")
    log.error("request failed: key=%s url=https://x/api?signature=abcdef0123", SECRET)
    try:
        raise RuntimeError(f"boom with {SECRET}")
    except RuntimeError:
        logging.getLogger("legguard.engine").exception("actor raised")

    written = stream.getvalue() + path.read_text()
    assert SECRET not in written and "abcdef0123" not in written
    assert "key=*** url=https://x/api?signature=***" in written
    assert "RuntimeError: boom with ***" in written  # the traceback is kept, scrubbed


def test_the_log_file_rotates_by_size(sinks: tuple[io.StringIO, Path]) -> None:
    _, path = sinks
    for i in range(100):
        logging.getLogger("legguard").info("line %d %s", i, "x" * 50)

    rotated = sorted(p.name for p in path.parent.iterdir())
    assert rotated == ["legguard.jsonl", "legguard.jsonl.1", "legguard.jsonl.2"]
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())
