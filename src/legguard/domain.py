"""The domain vocabulary at the bottom of legguard: sides, order types and statuses, markets, books, order
requests and updates, balances, and the errors a venue can answer. It imports nothing else of legguard, so the
pure core (`legguard.fsm`), the venues (`legguard.adapters`) and the engine all build on it.

Money and quantities are `Decimal` end to end; symbols are ccxt-unified (`ETH/USDT` spot,
`ETH/USDT:USDT` the USDⓈ-M perpetual).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

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


@dataclass(frozen=True, slots=True)
class MarginAccount:
    """The perp (USDⓈ-M) account as the venue reports it, in quote: what the margin guard reads."""

    wallet: Decimal  # wallet balance
    margin_balance: Decimal  # wallet + unrealised pnl
    maint_margin: Decimal  # maintenance margin of the open positions
    initial_margin: Decimal  # initial margin of positions and open orders
    available: Decimal  # what new orders (or a transfer out) may use

    @property
    def headroom(self) -> Decimal:
        """Distance to liquidation: `1 - maintenance margin / margin balance` (1: no position; 0: the venue
        liquidates). Binance shows the complement as the account's margin ratio."""
        if self.margin_balance <= 0:
            return ZERO
        return max(ZERO, 1 - self.maint_margin / self.margin_balance)


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
