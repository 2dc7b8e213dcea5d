"""`MeteredVenue`: a `Venue` that times every request by endpoint and counts failures by endpoint and error
type (for the metrics; whether the venue is down is the engine's venue watch's call, `engine/_outage.py`).

`legguard run` wraps the configured venue in it; everything the venue offers beyond the protocol (`release`,
`release_cancel`, `countdown_cancel_all`, `request_budget`) is passed through untouched, so the engine's
fast paths and capability checks see the venue as it is.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

from legguard.adapters._venue import ArmedOrder, Venue
from legguard.domain import (
    Balance,
    BookSnapshot,
    Market,
    OrderRequest,
    OrderUpdate,
    VenueError,
)

_T = TypeVar("_T")

Observe = Callable[[str, float, str | None], None]  # endpoint, seconds, error type (None: success)


class MeteredVenue:
    def __init__(self, venue: Venue, observe: Observe | None = None) -> None:
        self.inner = venue
        self.name = venue.name
        self.observe = observe

    def __getattr__(self, name: str) -> Any:  # capabilities beyond the protocol, unchanged
        return getattr(self.inner, name)

    async def _timed(self, endpoint: str, call: Callable[[], Awaitable[_T]]) -> _T:
        started = time.perf_counter()
        try:
            result = await call()
        except VenueError as exc:
            if self.observe is not None:
                self.observe(endpoint, time.perf_counter() - started, type(exc).__name__)
            raise
        if self.observe is not None:
            self.observe(endpoint, time.perf_counter() - started, None)
        return result

    # --- the protocol ---------------------------------------------------------------------------------

    async def load_markets(self) -> Mapping[str, Market]:
        return await self._timed("load_markets", self.inner.load_markets)

    async def fetch_order_book(self, symbol: str, limit: int = 20) -> BookSnapshot:
        return await self._timed("fetch_order_book", lambda: self.inner.fetch_order_book(symbol, limit))

    async def watch_order_book(self, symbol: str) -> BookSnapshot:
        return await self.inner.watch_order_book(symbol)  # a long poll: its duration is not a latency

    def arm(self, request: OrderRequest) -> ArmedOrder:
        return self.inner.arm(request)

    async def fire(self, armed: ArmedOrder) -> OrderUpdate:
        return await self._timed("create_order", lambda: self.inner.fire(armed))

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderUpdate:
        return await self._timed("cancel_order", lambda: self.inner.cancel_order(symbol, client_order_id))

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderUpdate:
        return await self._timed("fetch_order", lambda: self.inner.fetch_order(symbol, client_order_id))

    async def fetch_open_orders(self, symbol: str | None = None) -> list[OrderUpdate]:
        return await self._timed("fetch_open_orders", lambda: self.inner.fetch_open_orders(symbol))

    async def watch_orders(self) -> list[OrderUpdate]:
        return await self.inner.watch_orders()

    async def fetch_balance(self) -> Mapping[str, Balance]:
        return await self._timed("fetch_balance", self.inner.fetch_balance)

    async def fetch_positions(self) -> Mapping[str, Decimal]:
        return await self._timed("fetch_positions", self.inner.fetch_positions)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _MeteredCountdownVenue(MeteredVenue):
    """For a venue with the dead-man's switch: the method is defined, so protocol checks that read the class
    (Python 3.12+ `isinstance` on runtime protocols) see it."""

    async def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> None:
        inner: Any = self.inner
        await self._timed("countdown_cancel_all", lambda: inner.countdown_cancel_all(symbol, countdown_ms))


def metered(venue: Venue, observe: Observe | None = None) -> MeteredVenue:
    from legguard.engine._deadman import CountdownVenue

    cls = _MeteredCountdownVenue if isinstance(venue, CountdownVenue) else MeteredVenue
    return cls(venue, observe)
