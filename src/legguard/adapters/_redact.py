"""The secret guard for text: credentials, request signatures and listen keys masked before text reaches a
log, an exception or an answer. One process-wide registry (`SECRETS`) holds the credentials in use: the ccxt
venue registers its keys while open, `legguard run` registers the alert webhook URL, and every log sink
(`Redactor` filter on the ccxt logger, `LogScrubber` on the service handlers) masks them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

_SIGNATURE_RE = re.compile(r"(signature=)[0-9a-zA-Z%]+")
_LISTEN_KEY_RE = re.compile(r"(listenKey=|/ws/)[A-Za-z0-9]{16,}")
MAX_DETAIL = 400

SECRETS: set[str] = set()  # credentials currently in use in this process


def scrub(text: str, secrets: Iterable[str], limit: int | None = MAX_DETAIL) -> str:
    """`text` with credentials, request signatures and listen keys masked, cut to `limit` characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _SIGNATURE_RE.sub(r"\1***", text)
    text = _LISTEN_KEY_RE.sub(r"\1***", text)
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


class Redactor(logging.Filter):
    """Masks registered credentials in every record of the logger ccxt is given (ccxt logs request headers,
    which carry the API key, at DEBUG)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message, self.secrets | SECRETS)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class LogScrubber(logging.Filter):
    """For the service's own handlers (stderr, the JSON log file): masks every registered secret in the
    message and in the formatted traceback, without shortening either."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message, SECRETS, limit=None)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, SECRETS, limit=None)
        return True
