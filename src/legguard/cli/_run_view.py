"""What `legguard run` shows while it runs: in a terminal, the live dashboard (the same one `status --watch`
draws); elsewhere (a service, a pipe), one JSON status line per `--status-interval` on stderr."""

from __future__ import annotations

import math
from types import TracebackType

from rich.console import Console
from rich.live import Live

from legguard.engine.app._runner import RunStatus

from ._dashboard import render, status_line

LIVE_INTERVAL = 0.5


class RunView:
    def __init__(self, console: Console, *, live: bool, interval: float) -> None:
        self.console = console
        self.interval = interval
        self._live = Live(console=console, auto_refresh=False, transient=False) if live else None
        self._next_line = -math.inf

    @property
    def tick_interval(self) -> float:
        return LIVE_INTERVAL if self._live is not None else min(self.interval, 1.0)

    def __enter__(self) -> RunView:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def tick(self, status: RunStatus) -> None:
        if status.rpc is None:
            return
        if self._live is not None:
            self._live.update(render(status.rpc.status()), refresh=True)
            return
        import trio

        now = trio.current_time()
        if now >= self._next_line:
            self._next_line = now + self.interval
            self.console.print(status_line(status.rpc.status()), markup=False, highlight=False, soft_wrap=True)
