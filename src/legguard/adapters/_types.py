"""The vocabulary every venue speaks: markets, books, order requests, order updates, errors, and the
`Venue` protocol that is the only thing the engine knows about an exchange.

Money and quantities are `Decimal` end to end; symbols are ccxt-unified (`ETH/USDT` spot,
`ETH/USDT:USDT` the USDⓈ-M perpetual).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol, runtime_checkable

ZERO = Decimal(0)


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class MarketKind(enum.StrEnum):
    SPOT = "spot"
    LINEAR = "linear"  # USDⓈ-M perpetual


class OrderType(enum.StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class OrderStatus(enum.StrEnum):
    """ccxt's unified order statuses plus two local ones.

    `submitting`: the request is on its way and nothing has come back yet.
    `unknown`: the request timed out or was cancelled in flight; the order may or may not exist.
    """

    SUBMITTING = "submitting"
    OPEN = "open"
    CLOSED = "closed"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({OrderStatus.CLOSED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED})


class OrderOrigin(enum.StrEnum):
    """Who created the order an update is about."""

    OURS = "ours"
    LIQUIDATION = "liquidation"
    ADL = "adl"  # auto-deleverage


class RejectReason(enum.StrEnum):
    POST_ONLY_CROSS = "post_only_cross"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    INVALID_ORDER = "invalid_order"  # filter failure: tick, step, min notional, ...
    REDUCE_ONLY_REJECTED = "reduce_only_rejected"
    RATE_LIMITED = "rate_limited"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Market:
    symbol: str  # ccxt unified
    venue_symbol: str  # the exchange's own id, e.g. ETHUSDT
    kind: MarketKind
    base: str
    quote: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    min_notional: Decimal
    maker_fee: Decimal  # fraction, e.g. 0.001
    taker_fee: Decimal


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """Top levels of an L2 book, best first on each side."""

    symbol: str
    bids: tuple[tuple[Decimal, Decimal], ...]
    asks: tuple[tuple[Decimal, Decimal], ...]
    timestamp: float  # trio clock of the venue view that produced it
    sequence: int = 0

    @property
    def best_bid(self) -> Decimal | None:
        return self.bids[0][0] if self.bids else None

    @property
    def best_ask(self) -> Decimal | None:
        return self.asks[0][0] if self.asks else None


@dataclass(frozen=True, slots=True)
class OrderRequest:
    client_order_id: str
    symbol: str
    side: Side
    type: OrderType
    amount: Decimal
    price: Decimal | None = None
    post_only: bool = False
    reduce_only: bool = False
    ioc: bool = False  # limit orders only: immediate-or-cancel, the unfilled rest expires at once

    def __post_init__(self) -> None:
        if self.type is OrderType.LIMIT and self.price is None:
            raise ValueError(f"order {self.client_order_id}: a limit order needs a price")
        if self.ioc and (self.type is not OrderType.LIMIT or self.post_only):
            raise ValueError(f"order {self.client_order_id}: ioc needs a limit order that is not post-only")
        if not self.amount.is_finite() or self.amount <= 0:
            raise ValueError(f"order {self.client_order_id}: amount must be > 0, got {self.amount}")


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """The venue's view of one order at one moment. Quantities are cumulative, never deltas."""

    client_order_id: str
    symbol: str
    side: Side
    status: OrderStatus
    amount: Decimal
    filled: Decimal = ZERO
    average: Decimal | None = None
    fee_base: Decimal = ZERO  # cumulative fee charged in the base asset (spot buys on Binance)
    fee_quote: Decimal = ZERO  # cumulative fee charged in the quote asset
    reason: RejectReason | None = None
    origin: OrderOrigin = OrderOrigin.OURS
    venue_order_id: str | None = None
    timestamp: float = 0.0

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled


@dataclass(frozen=True, slots=True)
class Balance:
    free: Decimal
    locked: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        return self.free + self.locked


@dataclass(slots=True)
class ArmedOrder:
    """An order prepared for release: validated, and for wire venues signed and serialised.

    `Venue.arm` does every expensive step, so that `Venue.fire` on two armed legs releases both with as
    little between them as possible. A venue may also offer `release(armed: Sequence[ArmedOrder]) -> None`:
    put every armed order on the wire now, synchronously and back to back (refusals are kept and raised by
    `fire`, which then only awaits the answer). The engine calls it, when present, before starting the sends;
    likewise `release_cancel(symbol, client_order_id) -> None` writes a cancel at once, `cancel_order` then
    only awaits its answer.
    """

    request: OrderRequest
    payload: object = None  # venue-specific prepared request
    extra: dict[str, object] = field(default_factory=dict)


# --- errors -----------------------------------------------------------------------------------------


class VenueError(Exception):
    """Base of everything a venue raises. Messages never carry credentials."""


class OrderRejected(VenueError):
    """The venue definitively refused the order: it does not exist."""

    def __init__(self, client_order_id: str, reason: RejectReason, detail: str = "") -> None:
        self.client_order_id = client_order_id
        self.reason = reason
        self.detail = detail
        super().__init__(f"order {client_order_id} rejected ({reason}){': ' + detail if detail else ''}")


class OrderNotFound(VenueError):
    def __init__(self, client_order_id: str, detail: str = "") -> None:
        self.client_order_id = client_order_id
        super().__init__(f"order {client_order_id} not found{': ' + detail if detail else ''}")


class DuplicateOrder(VenueError):
    """The client order id is already in use: the order exists; fetch it, never resend."""

    def __init__(self, client_order_id: str) -> None:
        self.client_order_id = client_order_id
        super().__init__(f"order {client_order_id} already exists")


class OutcomeUnknown(VenueError):
    """Network failure or timeout: the request may or may not have taken effect. Reconcile by client id."""


class RateLimited(VenueError):
    def __init__(self, detail: str = "", retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limited{': ' + detail if detail else ''}")


class AuthenticationFailed(VenueError):
    pass


class StreamDisconnected(VenueError):
    """A market-data or user-data stream dropped; updates may have been missed."""


class MalformedResponse(VenueError):
    """The venue answered with something that does not parse: the outcome is unknown."""


# --- the protocol -----------------------------------------------------------------------------------


@runtime_checkable
class Venue(Protocol):
    """Everything the engine may do at an exchange (spot and perp markets of one venue).

    All methods are trio-async. Failures raise `VenueError` subclasses; a request that may or may not
    have taken effect raises `OutcomeUnknown` (or is cancelled by trio), never `OrderRejected`.
    """

    name: str

    async def load_markets(self) -> Mapping[str, Market]: ...

    async def fetch_order_book(self, symbol: str, limit: int = 20) -> BookSnapshot: ...

    async def watch_order_book(self, symbol: str) -> BookSnapshot:
        """Wait for the next change of the book and return it."""
        ...

    def arm(self, request: OrderRequest) -> ArmedOrder:
        """Validate and prepare an order without sending it. Raises OrderRejected for invalid orders."""
        ...

    async def fire(self, armed: ArmedOrder) -> OrderUpdate:
        """Send an armed order; returns the acknowledgement (status open, closed or expired)."""
        ...

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderUpdate: ...

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderUpdate: ...

    async def fetch_open_orders(self, symbol: str | None = None) -> list[OrderUpdate]: ...

    async def watch_orders(self) -> list[OrderUpdate]:
        """Wait for the next batch of order updates (ours, and the venue's own: liquidation, ADL)."""
        ...

    async def fetch_balance(self) -> Mapping[str, Balance]: ...

    async def fetch_positions(self) -> Mapping[str, Decimal]:
        """Signed base quantity per perp symbol (negative = short)."""
        ...

    async def aclose(self) -> None: ...
