"""The `Venue` protocol — the only thing the engine knows about an exchange — and `ArmedOrder`, an order
prepared for release. Every venue kind (`sim/`, `ccxt/`, and what the emulator serves) implements it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol, runtime_checkable

from legguard.domain import Balance, BookSnapshot, MarginAccount, Market, OrderRequest, OrderUpdate


@dataclass(slots=True)
class ArmedOrder:
    """An order prepared for release: validated, and for wire venues signed and serialised.

    `Venue.arm` does every expensive step, so that `Venue.fire` on two armed legs releases both with as
    little between them as possible. A venue may also offer `release(armed: Sequence[ArmedOrder]) -> None`:
    put every armed order on the wire now, synchronously and back to back (refusals are kept and raised by
    `fire`, which then only awaits the answer). The engine calls it, when present, before starting the sends;
    likewise `release_cancel(symbol, client_order_id) -> None` writes a cancel at once, `cancel_order` then
    only awaits its answer; and `cancel_on_answer(answer_of, refused, symbol, client_order_id) -> None` /
    `disarm_cancel(answer_of, client_order_id)` / `cancel_written(client_order_id) -> bool` let the engine
    arm a cancel (journaled first) that the venue writes the moment it reads the answer to `answer_of`, if
    that answer says the order rests (or, `refused`, refuses it), before the answer is handed on.
    """

    request: OrderRequest
    payload: object = None  # venue-specific prepared request
    extra: dict[str, object] = field(default_factory=dict)


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

    async def fetch_margin(self) -> MarginAccount:
        """The perp account's margin figures, the venue's own (what the margin guard reads)."""
        ...

    async def transfer(self, asset: str, amount: Decimal, *, to_perp: bool) -> None:
        """Move `amount` of `asset` from the spot account to the USDⓈ-M wallet (`to_perp`) or back.
        Raises VenueError when refused (OutcomeUnknown when the answer was lost)."""
        ...

    async def aclose(self) -> None: ...


# --- optional capability: funding payments ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FundingPayment:
    """One funding payment the venue booked to the account's perp position (Binance: income FUNDING_FEE)."""

    symbol: str  # the perp's unified symbol (as in `Market.symbol`)
    amount: Decimal  # quote received (+) or paid (-)
    time_ms: int  # the venue's funding time, epoch milliseconds
    tran_id: str  # the venue's transaction id: what makes booking it idempotent


@runtime_checkable
class FundingVenue(Protocol):
    """A venue that can list the funding payments booked to the account (optional: the engine books funding
    to packages only when its venue offers this)."""

    async def fetch_funding(self, since_ms: int | None = None) -> list[FundingPayment]:
        """Funding payments with `time_ms >= since_ms` (all the venue keeps when None), oldest first."""
        ...


# --- optional capability: the funding rate ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FundingRate:
    """What the venue says of a perp's funding now (Binance: `GET /fapi/v1/premiumIndex`). Rates are fractions
    per funding interval; positive: longs pay shorts (a package's short receives)."""

    symbol: str  # the perp's unified symbol
    rate: Decimal  # the rate the next funding time settles at, as estimated now (Binance: lastFundingRate)
    # The rate the premium right now implies for the intervals after the next one: premium + clamp(interest -
    # premium, +-0.05 %) (Binance's formula on the instantaneous premium, mark over index), capped at +-0.75 %.
    predicted: Decimal
    next_funding_ms: int | None  # the venue's next funding time, epoch ms (None: the venue pays no funding)
    time_ms: int  # the venue's clock when it answered, epoch ms (time to the next funding = the difference)
    interval: float | None = None  # seconds between funding times, when the venue says (None: unknown)


@runtime_checkable
class FundingRateVenue(Protocol):
    """A venue that can tell a perp's current and predicted funding rate (optional: strategies that weigh
    funding need it)."""

    async def fetch_funding_rate(self, symbol: str) -> FundingRate: ...


FUNDING_CLAMP = Decimal("0.0005")  # Binance: F = P + clamp(I - P, -0.05 %, +0.05 %)
FUNDING_CAP = Decimal("0.0075")  # |F| <= 0.75 % (most USDⓈ-M symbols)


def implied_funding_rate(premium: Decimal, interest: Decimal) -> Decimal:
    """The funding rate a premium `premium` (perp over index, fraction) and an interest component `interest`
    (per interval) imply by Binance's formula, capped; 8 decimals."""
    rate = premium + max(-FUNDING_CLAMP, min(FUNDING_CLAMP, interest - premium))
    return max(-FUNDING_CAP, min(FUNDING_CAP, rate)).quantize(Decimal("0.00000001"))
