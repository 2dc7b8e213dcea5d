"""Inputs to the package decision core (events) and its outputs (commands).

Events are facts the engine observed; commands are effects the core asks for. Both are plain frozen
dataclasses that serialise to JSON-able dicts, because the journal stores every event fed to a core and
`legguard audit verify` replays them through a fresh core.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, ClassVar

from legguard.domain import OrderStatus, OrderType, RejectReason, Side

from ._table import State, Trigger


class LegRole(enum.StrEnum):
    SPOT = "spot"
    PERP = "perp"


class Purpose(enum.StrEnum):
    ENTRY = "entry"
    UNWIND = "unwind"
    EXIT = "exit"  # the passive phase of closing a hedged package: post-only limits priced from L2


class ExecutionStyle(enum.StrEnum):
    """How a package's two legs meet the market (one lifecycle and one kill switch for all three)."""

    MAKER_MAKER = "maker-maker"  # both legs rest post-only at the touch (the default)
    MAKER_TAKER = "maker-taker"  # one leg rests post-only; each of its fills is hedged at once by an IOC limit
    TAKER_TAKER = "taker-taker"  # both legs IOC limits, capped at a slippage bound priced from L2


class LegExecution(enum.StrEnum):
    MAKER = "maker"  # rests post-only
    TAKER = "taker"  # IOC limit at its price cap; never chases past it


class OrphanPolicy(enum.StrEnum):
    FLATTEN = "flatten"  # close both legs entirely
    TRIM = "trim"  # close only the unmatched residual; the matched part stays hedged


# --- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = _encode(value)
        return out


@dataclass(frozen=True, slots=True)
class Dispatch(Event):
    """Send both entry legs (pending -> dispatched)."""

    kind: ClassVar[str] = "dispatch"


@dataclass(frozen=True, slots=True)
class Abort(Event):
    """Refuse the package before any order left (pending -> flat)."""

    kind: ClassVar[str] = "abort"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OrderEvent(Event):
    """The venue's cumulative view of one of the package's orders (ack, fill, cancel, reject, expiry), or
    the engine's own conclusion that the outcome is `unknown` (timeout, cancelled in flight)."""

    kind: ClassVar[str] = "order"
    client_order_id: str
    status: OrderStatus
    filled: Decimal = Decimal(0)
    average: Decimal | None = None
    fee_base: Decimal = Decimal(0)
    fee_quote: Decimal = Decimal(0)
    reason: RejectReason | None = None


@dataclass(frozen=True, slots=True)
class FillDeadline(Event):
    """Resting entry orders did not fill in time: cancel them and decide from actual fills."""

    kind: ClassVar[str] = "fill_deadline"


@dataclass(frozen=True, slots=True)
class Shutdown(Event):
    """The engine is stopping (Ctrl-C, SIGTERM, --seconds). Cancels entry, never safety."""

    kind: ClassVar[str] = "shutdown"


@dataclass(frozen=True, slots=True)
class Fault(Event):
    """The package actor raised unexpectedly; the supervisor routes it to the kill switch."""

    kind: ClassVar[str] = "fault"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VenueReduction(Event):
    """The venue reduced the perp short by itself (liquidation / ADL): `quantity` bought back."""

    kind: ClassVar[str] = "venue_reduction"
    quantity: Decimal
    origin: str = "liquidation"


@dataclass(frozen=True, slots=True)
class CloseRequested(Event):
    """Operator or policy asks to close a hedged package. With both prices (post-only limits the engine
    priced from L2: spot sell, perp buy) the exit starts passive; without, it goes straight to the kill
    switch's aggressive orders. `policy` names what asked (basis, max_hold, loss_limit, margin_guard,
    operator); `reason` says why."""

    kind: ClassVar[str] = "close_requested"
    reason: str = ""
    policy: str = "operator"
    spot_price: Decimal | None = None
    perp_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ExitDeadline(Event):
    """The passive exit ran out of time (its own deadline, or the leg deadline once one side has closed
    more than the other): escalate to aggressive orders."""

    kind: ClassVar[str] = "exit_deadline"


@dataclass(frozen=True, slots=True)
class Recovered(Event):
    """The engine restarted and re-queried every order of this package; decide from the facts."""

    kind: ClassVar[str] = "recovered"


@dataclass(frozen=True, slots=True)
class Restarted(Event):
    """Recovery's first event for a package: orders the package sends from now on carry `epoch` (a number the
    journal reserved durably for this restart) in their client ids, so none can reuse an id the crashed
    process sent and the journal lost (the venue would accept a reused id as a NEW order once the first one is
    closed). Decides nothing by itself."""

    kind: ClassVar[str] = "restarted"
    epoch: int


@dataclass(frozen=True, slots=True)
class Adopted(Event):
    """Recovery found at the venue an order of this package that the journal does not know (a crash lost the
    commits that journaled it): the core counts it from now on; the venue's word on it follows as an
    OrderEvent. Decides nothing by itself."""

    kind: ClassVar[str] = "adopted"
    intent: OrderIntent

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "intent": self.intent.to_dict()}


_ALL_EVENTS: tuple[type[Event], ...] = (Dispatch, Abort, OrderEvent, FillDeadline, Shutdown, Fault, VenueReduction,
                                       CloseRequested, ExitDeadline, Recovered, Restarted, Adopted)  # fmt: skip
EVENT_TYPES: dict[str, type[Event]] = {cls.kind: cls for cls in _ALL_EVENTS}


def event_from_dict(data: dict[str, Any]) -> Event:
    data = dict(data)
    kind = data.pop("kind")
    cls = EVENT_TYPES[kind]
    if cls is Adopted:
        return Adopted(OrderIntent.from_dict(data["intent"]))
    kwargs = {f.name: _decode(f.name, data[f.name]) for f in fields(cls) if f.name in data}
    return cls(**kwargs)


# --- commands ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """Everything needed to send one order, journaled before it is sent."""

    client_order_id: str
    role: LegRole
    purpose: Purpose
    attempt: int
    symbol: str
    side: Side
    type: OrderType
    amount: Decimal
    price: Decimal | None
    post_only: bool
    reduce_only: bool
    ioc: bool = False  # a taker leg: immediate-or-cancel limit, capped at `price`

    def to_dict(self) -> dict[str, Any]:
        # Explicit rather than dataclasses.asdict: this runs for every order on the journal's hot path.
        return {
            "client_order_id": self.client_order_id,
            "role": self.role.value,
            "purpose": self.purpose.value,
            "attempt": self.attempt,
            "symbol": self.symbol,
            "side": self.side.value,
            "type": self.type.value,
            "amount": str(self.amount),
            "price": None if self.price is None else str(self.price),
            "post_only": self.post_only,
            "reduce_only": self.reduce_only,
            "ioc": self.ioc,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrderIntent:
        return cls(
            client_order_id=data["client_order_id"],
            role=LegRole(data["role"]),
            purpose=Purpose(data["purpose"]),
            attempt=int(data["attempt"]),
            symbol=data["symbol"],
            side=Side(data["side"]),
            type=OrderType(data["type"]),
            amount=Decimal(data["amount"]),
            price=None if data["price"] is None else Decimal(data["price"]),
            post_only=bool(data["post_only"]),
            reduce_only=bool(data["reduce_only"]),
            ioc=bool(data.get("ioc", False)),  # journals written before execution styles have none
        )


@dataclass(frozen=True, slots=True)
class Command:
    pass


@dataclass(frozen=True, slots=True)
class Transitioned(Command):
    source: State
    trigger: Trigger
    dest: State
    reason: str


@dataclass(frozen=True, slots=True)
class JournalIntent(Command):
    """Write-ahead: must be durable before the matching SendOrder runs."""

    intent: OrderIntent


@dataclass(frozen=True, slots=True)
class SendOrder(Command):
    """Consecutive SendOrders are released together (both legs at once), never one after the other."""

    intent: OrderIntent


@dataclass(frozen=True, slots=True)
class CancelOrder(Command):
    client_order_id: str
    symbol: str


@dataclass(frozen=True, slots=True)
class QueryOrder(Command):
    """Ask the venue for the order by client id; the answer comes back as an OrderEvent."""

    client_order_id: str
    symbol: str


# --- encoding helpers -------------------------------------------------------------------------------

_DECIMAL_FIELDS = frozenset(
    {"filled", "average", "fee_base", "fee_quote", "quantity", "amount", "price", "spot_price", "perp_price"}
)


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _decode(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _DECIMAL_FIELDS:
        return Decimal(value)
    if name == "status":
        return OrderStatus(value)
    if name == "reason" and value in RejectReason.__members__.values():
        return RejectReason(value)
    return value
