"""Explicit-state model checker for the package lifecycle: explores breadth-first every state the real
`PackageCore` reaches against a small causal model of the venue and the engine, and checks the lifecycle
properties on each state and transition (a violation comes with its shortest counterexample trace).

The environment mirrors what `engine/_actor.py` and `engine/_recovery.py` do with the core's commands: a
send is acknowledged, rejected or times out (the order then may or may not exist); a cancel of an order no
longer open turns into a query; a query for an order the venue never took answers `rejected/other`; a fault
or shutdown kills the actor's in-flight requests (a killed send reports `unknown`); a crash loses
everything but the journal and the venue.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from decimal import ROUND_DOWN, Decimal
from itertools import product
from typing import Any, Final

from legguard.domain import OrderStatus, RejectReason, Side

from ._core import LegPlan, PackageCore, PackagePlan
from ._events import (
    Abort,
    CancelOrder,
    CloseRequested,
    Command,
    Dispatch,
    Event,
    ExecutionStyle,
    ExitDeadline,
    Fault,
    FillDeadline,
    JournalIntent,
    LegRole,
    OrderEvent,
    OrphanPolicy,
    Purpose,
    QueryOrder,
    Recovered,
    SendOrder,
    Shutdown,
    Transitioned,
    VenueReduction,
)
from ._table import TRANSITIONS, Edge, InvalidTransition, State, Trigger, transition_map

ZERO: Final = Decimal(0)

# Binance's spot taker/maker fee, charged in the base asset on buys: what is held is less than what filled.
SPOT_FEE_RATE: Final = Decimal("0.001")

# The properties, in report order. Safety properties count as violations; the last two are liveness.
PROPERTIES: Final = (
    "transitions",  # P1: only documented transitions fire (InvalidTransition, or a Transitioned not in the table)
    "errors",  # P1: the core raised something else while handling an event
    "exposure",  # P2: a quiescent state outside unwinding holds unmatched exposure
    "flat",  # P3: flat with a position or an open order at the venue
    "hedged",  # P3: hedged with unequal legs at the venue
    "write_ahead",  # P4: a SendOrder without an earlier JournalIntent, or a client order id sent twice
    "armed",  # P4: a cancel armed for an answer (`cancels_on_answer`) that the answer's step does not command
    "exit_naked",  # P5: past the exit's (leg) deadline an exit limit still rests with no cancel or query asked
    "oversell",  # P5: spot sells resting or in flight beyond what is held, or the perp bought back past flat
    "exit_flat",  # P5: a package whose close was accepted is hedged again (an exit must end flat)
    "replay",  # feeding the journaled events to a fresh core does not give the live core
    "deadlock",  # P2: no path leads to hedged or flat
    "stuck",  # only paths that need the market's help (a resting fill, expiry, ...) lead to hedged or flat
)
LIVENESS: Final = frozenset({"deadlock", "stuck"})
# The answers a cancel armed for a refusal leaves on: a refusal, or an error that leaves the outcome unknown.
_REFUSED: Final = frozenset({OrderStatus.REJECTED, OrderStatus.UNKNOWN})


class UnknownEdge(ValueError):
    """A `--without SOURCE:TRIGGER` that names no edge of the table."""


def parse_edge(text: str) -> tuple[State, Trigger]:
    """`"orphaned:unwind"` -> (State.ORPHANED, Trigger.UNWIND), checked against the table."""
    source, sep, trigger = text.partition(":")
    valid = ", ".join(f"{e.source}:{e.trigger}" for e in TRANSITIONS)
    if not sep:
        raise UnknownEdge(f"edge {text!r} must be SOURCE:TRIGGER; valid edges: {valid}")
    try:
        pair = (State(source.strip()), Trigger(trigger.strip()))
    except ValueError:
        raise UnknownEdge(f"edge {text!r} names no state/trigger; valid edges: {valid}") from None
    if pair not in transition_map():
        raise UnknownEdge(f"edge {text!r} is not in the transition table; valid edges: {valid}")
    return pair


def edges_without(removed: Iterable[tuple[State, Trigger]]) -> tuple[Edge, ...]:
    drop = set(removed)
    return tuple(e for e in TRANSITIONS if (e.source, e.trigger) not in drop)


@dataclass(frozen=True, slots=True)
class Bounds:
    """What keeps the exploration finite. Each count is the most times the environment may do it on one
    path; the package is always 2 perp steps, so one partial fill of an entry is possible."""

    partial_fills: int = 1  # resting entry partial fills and partially filled unwind market orders
    timeouts: int = 1  # acknowledgement timeouts of sends and cancels (outcome unknown)
    unwind_rejects: int = 1  # unwind market orders rejected by the venue
    expiries: int = 1  # resting entry orders expired by the venue
    liquidations: int = 1  # venue reductions of the perp short (liquidation / ADL), while hedged or later
    stale_reports: int = 1  # an old acknowledgement delivered after newer facts
    crashes: int = 1  # process crash + recovery from the journal
    faults: int = 1  # package actor raised; supervisor rebuilds the core and feeds Fault
    shutdowns: int = 1  # engine cancellation (feeds Shutdown, drains without the order stream)
    closes: int = 1  # CloseRequested while hedged (passive exit, or straight to aggressive orders)
    accidents: int | None = 1  # most timeouts + crashes + faults + shutdowns together on one path (None: no cap)
    depth: int | None = None  # most environment steps on a path (None: only the counts above bound it)
    policies: tuple[OrphanPolicy, ...] = (OrphanPolicy.FLATTEN, OrphanPolicy.TRIM)
    # The execution style of the modelled package. The environment's entry orders rest, fill (partly) and
    # expire in any order, which covers a taker leg's IOC answers as well as a maker leg's life.
    style: ExecutionStyle = ExecutionStyle.MAKER_MAKER

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "style":
                if not isinstance(value, ExecutionStyle):
                    raise ValueError(f"Bounds.style must be an ExecutionStyle, got {value!r}")
            elif f.name == "policies":
                if not value or not all(isinstance(p, OrphanPolicy) for p in value):
                    raise ValueError(f"Bounds.policies must be a non-empty tuple of OrphanPolicy, got {value!r}")
            elif not (value is None and f.name in ("accidents", "depth")) and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise ValueError(f"Bounds.{f.name} must be a whole number >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["policies"] = [p.value for p in self.policies]
        out["style"] = self.style.value
        out["quantity_steps"] = 2
        out["spot_fee_rate"] = str(SPOT_FEE_RATE)
        return out


# The default suite. Every feature at once does not fit in a minute (one accident on top of the market
# features but expiry and stale reports is already ~260k states), so `legguard fsm --check` runs three
# profiles that together exercise every mechanism and the interactions that found bugs: trouble in the
# market, accidents during entry and unwind (with partial fills and rejects), and accidents after a hedge
# (liquidation, close). `--bound` runs one profile instead.
_QUIET_MARKET: Final = Bounds(
    partial_fills=0, unwind_rejects=0, expiries=0, liquidations=0, stale_reports=0, closes=0
)  # fmt: skip
PROFILES: Final = {  # largest first: the explorations are spread over processes in this order
    "accidents": replace(_QUIET_MARKET, partial_fills=1, unwind_rejects=1),
    "hedged": replace(_QUIET_MARKET, liquidations=1, closes=1),
    "market": Bounds(timeouts=0, crashes=0, faults=0, shutdowns=0, accidents=0, closes=0),
    # Exits under market trouble: partial fills and expiry of the resting exit limits, a liquidation while
    # they rest, refused closing orders (accidents during an exit are in `hedged`).
    "exits": Bounds(timeouts=0, crashes=0, faults=0, shutdowns=0, accidents=0, stale_reports=0),
}

# Budget slots carried in each world (index into World.used). `deadlines` is the engine's single fill timer.
_BUDGETS: Final = (
    "partial_fills", "timeouts", "unwind_rejects", "expiries", "liquidations", "stale_reports", "crashes",
    "faults", "shutdowns", "closes", "deadlines", "exit_deadlines",
)  # fmt: skip
_SLOT: Final = {name: i for i, name in enumerate(_BUDGETS)}
# The kinds of trouble that multiply the state space fastest when combined; `Bounds.accidents` caps them.
_ACCIDENTS: Final = ("timeouts", "crashes", "faults", "shutdowns")


def model_plan(
    policy: OrphanPolicy = OrphanPolicy.FLATTEN, style: ExecutionStyle = ExecutionStyle.MAKER_MAKER
) -> PackagePlan:
    """BTC-like grids: the perp step is the coarse grid (2 steps per package); spot trades 100x finer, so
    a spot fee in base leaves a residual the unwind can round away but not to zero. The spot buy is grossed
    up for that fee (0.00201 holds 0.00200799 against the 0.002 short). maker-taker rests spot."""
    spot_step = Decimal("0.00001")
    quantity = Decimal("0.002")
    amount = LegPlan("", Side.BUY, ZERO, spot_step, spot_step, fee_rate=SPOT_FEE_RATE).gross(quantity)
    return PackagePlan(
        package_id="mc",
        client_id_prefix="lg-mc",
        quantity=quantity,
        spot=LegPlan(
            "BTC/USDT",
            Side.BUY,
            Decimal("60000"),
            step=spot_step,
            dust=spot_step,
            amount=amount,
            fee_rate=SPOT_FEE_RATE,
        ),
        perp=LegPlan("BTC/USDT:USDT", Side.SELL, Decimal("60012"), step=Decimal("0.001"), dust=Decimal("0.001")),
        policy=policy,
        style=style,
    )


# --- the world outside the core -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VenueOrder:
    """An order as the venue holds it (an order the venue refused or never received is simply absent)."""

    cid: str
    role: LegRole
    purpose: Purpose
    side: Side
    amount: Decimal
    status: OrderStatus
    filled: Decimal = ZERO
    fee_base: Decimal = ZERO

    def report(self) -> OrderEvent:
        return OrderEvent(self.cid, self.status, filled=self.filled, fee_base=self.fee_base)


@dataclass(frozen=True, slots=True)
class World:
    venue: tuple[VenueOrder, ...]  # by client order id
    pending: tuple[tuple[str, str], ...]  # requests in flight: ("send" | "cancel" | "query", cid), sorted, no repeats
    used: tuple[int, ...]  # budget slots, see _BUDGETS
    liquidated: Decimal  # perp short bought back by the venue
    journaled: frozenset[str]  # client order ids with a JournalIntent so far
    sent: frozenset[str]  # client order ids with a SendOrder so far
    stream: bool  # the venue's order stream reaches the core (False while the engine drains at shutdown)

    def order(self, cid: str) -> VenueOrder | None:
        for o in self.venue:
            if o.cid == cid:
                return o
        return None

    def spot_held(self) -> Decimal:
        return sum((_signed(o) - o.fee_base for o in self.venue if o.role is LegRole.SPOT), ZERO)

    def perp_position(self) -> Decimal:
        return sum((_signed(o) for o in self.venue if o.role is LegRole.PERP), ZERO) + self.liquidated

    def open_orders(self) -> list[VenueOrder]:
        return [o for o in self.venue if o.status is OrderStatus.OPEN]

    def to_dict(self) -> dict[str, Any]:
        return {
            "orders": {o.cid: f"{o.status.value} {o.filled}/{o.amount}" for o in self.venue},
            "spot_held": str(self.spot_held()),
            "perp_position": str(self.perp_position()),
            "liquidated": str(self.liquidated),
            "in_flight": [f"{kind} {cid}" for kind, cid in self.pending],
            "order_stream": self.stream,
        }


def _signed(o: VenueOrder) -> Decimal:
    return o.filled if o.side is Side.BUY else -o.filled


@dataclass(frozen=True, slots=True)
class Action:
    """One thing the environment does. `market` actions need the market's help (or an accident): the
    `stuck` check asks whether hedged/flat is reachable without them."""

    kind: str
    cid: str = ""
    arg: str = ""
    market: bool = False

    def label(self) -> str:
        return " ".join(p for p in (self.kind, self.cid, self.arg) if p)


# --- results --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class TraceStep:
    action: str
    events: list[dict[str, Any]]
    commands: list[str]
    state: str

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "events": self.events, "commands": self.commands, "state": self.state}


@dataclass(slots=True)
class Counterexample:
    prop: str
    message: str
    profile: str
    policy: str
    trace: list[TraceStep]
    bad_state: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "property": self.prop,
            "message": self.message,
            "profile": self.profile,
            "policy": self.policy,
            "trace": [s.to_dict() for s in self.trace],
            "bad_state": self.bad_state,
        }


@dataclass(slots=True)
class CheckReport:
    bounds: dict[str, Bounds]  # profile name -> bounds
    without: list[str]
    states_explored: int = 0
    transitions_explored: int = 0
    max_depth: int = 0
    frontier: int = 0  # states at the depth bound, not expanded
    seconds: float = 0.0  # wall clock
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROPERTIES, 0))
    examples: dict[str, Counterexample] = field(default_factory=dict)  # shortest per property
    states_by_lifecycle: dict[str, int] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per (profile, policy) exploration

    @property
    def violations(self) -> int:
        return sum(n for p, n in self.counts.items() if p not in LIVENESS)

    @property
    def deadlocks(self) -> int:
        return self.counts["deadlock"]

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    @property
    def counterexample(self) -> Counterexample | None:
        for prop in PROPERTIES:
            if prop in self.examples:
                return self.examples[prop]
        return None

    def merge(self, other: CheckReport) -> None:
        self.bounds.update(other.bounds)
        self.states_explored += other.states_explored
        self.transitions_explored += other.transitions_explored
        self.max_depth = max(self.max_depth, other.max_depth)
        self.frontier += other.frontier
        for prop, n in other.counts.items():
            self.counts[prop] += n
        for prop, example in other.examples.items():
            mine = self.examples.get(prop)
            if mine is None or len(example.trace) < len(mine.trace):
                self.examples[prop] = example
        for state, n in other.states_by_lifecycle.items():
            self.states_by_lifecycle[state] = self.states_by_lifecycle.get(state, 0) + n
        self.runs += other.runs

    def to_dict(self) -> dict[str, Any]:
        first = self.counterexample
        return {
            "ok": self.ok,
            "states_explored": self.states_explored,
            "transitions_explored": self.transitions_explored,
            "violations": self.violations,
            "deadlocks": self.deadlocks,
            "stuck": self.counts["stuck"],
            "properties": dict(self.counts),
            "bounds": {name: b.to_dict() for name, b in self.bounds.items()},
            "without": list(self.without),
            "max_depth": self.max_depth,
            "frontier": self.frontier,
            "states_by_lifecycle": dict(self.states_by_lifecycle),
            "runs": list(self.runs),
            "seconds": round(self.seconds, 3),
            "counterexample": None if first is None else first.to_dict(),
            "counterexamples": {p: c.to_dict() for p, c in self.examples.items()},
        }


# --- one step of the environment ------------------------------------------------------------------------


class _Violation(Exception):
    def __init__(self, prop: str, message: str) -> None:
        self.prop = prop
        self.message = message
        super().__init__(message)


class _Step:
    """A mutable copy of (core, world) that one action changes: venue effects first, then events fed to the
    core, whose commands become requests in flight. Transition-level properties are checked as it goes."""

    def __init__(self, checker: ModelChecker, core: PackageCore, world: World) -> None:
        self.checker = checker
        self.core = core
        self.venue = {o.cid: o for o in world.venue}
        self.pending = list(world.pending)
        self.used = list(world.used)
        self.liquidated = world.liquidated
        self.journaled = set(world.journaled)
        self.sent = set(world.sent)
        self.stream = world.stream
        self.events: list[Event] = []
        self.commands: list[Command] = []
        self.problems: list[tuple[str, str]] = []  # non-fatal transition-level violations

    def world(self) -> World:
        return World(
            venue=tuple(sorted(self.venue.values(), key=lambda o: o.cid)),
            pending=tuple(sorted(self.pending)),
            used=tuple(self.used),
            liquidated=self.liquidated,
            journaled=frozenset(self.journaled),
            sent=frozenset(self.sent),
            stream=self.stream,
        )

    def spend(self, budget: str) -> None:
        self.used[_SLOT[budget]] += 1

    def feed(self, event: Event) -> None:
        self.events.append(event)
        # What the core arms for an answer still travelling, before it comes: a venue may write those cancels
        # as it reads the answer, before this step, which must then command each of them.
        armed = self.core.cancels_on_answer() if type(event) is OrderEvent else ()
        try:
            commands = self.core.handle(event)
        except InvalidTransition as exc:
            raise _Violation("transitions", f"{exc} (handling event {event.kind!r})") from exc
        except Exception as exc:
            raise _Violation(
                "errors", f"core raised {type(exc).__name__}: {exc} (handling event {event.kind!r})"
            ) from exc
        self.commands.extend(commands)
        for a in armed:
            assert type(event) is OrderEvent
            if a.answer_of != event.client_order_id:
                continue
            if (event.status in _REFUSED) if a.refused else (event.status is OrderStatus.OPEN):
                cid = a.order.client_order_id
                if not any(type(c) is CancelOrder and c.client_order_id == cid for c in commands):
                    when = "refused" if a.refused else "resting"
                    self.problems.append(("armed", f"{cid}'s cancel armed for {a.answer_of} {when}, not commanded"))
        full, reduced = self.checker.full_map, self.checker.edge_map
        for c in commands:
            match c:
                case Transitioned(source=s, trigger=t, dest=d):
                    if full.get((s, t)) is not d or reduced.get((s, t)) is not d:
                        self.problems.append(("transitions", f"{s} --{t}--> {d} is not in the table"))
                case JournalIntent(intent=intent):
                    self.journaled.add(intent.client_order_id)
                case SendOrder(intent=intent):
                    cid = intent.client_order_id
                    if cid not in self.journaled:
                        self.problems.append(("write_ahead", f"SendOrder {cid} before its JournalIntent"))
                    if cid in self.sent:
                        self.problems.append(("write_ahead", f"client order id {cid} sent twice"))
                    self.sent.add(cid)
                    self.pending.append(("send", cid))
                case CancelOrder(client_order_id=cid):
                    self.request("cancel", cid)
                case QueryOrder(client_order_id=cid):
                    self.request("query", cid)

    def request(self, kind: str, cid: str) -> None:
        # A second cancel or query for an order while one is in flight is answered together with it: the
        # answer is the venue's word at that moment either way (keeps duplicates from multiplying states).
        if (kind, cid) not in self.pending:
            self.pending.append((kind, cid))

    def take(self, kind: str, cid: str) -> None:
        self.pending.remove((kind, cid))

    def put(self, order: VenueOrder) -> None:
        self.venue[order.cid] = order

    def answer(self, order: VenueOrder) -> None:
        """A venue change reported in the answer to our own request (fire, cancel)."""
        self.put(order)
        self.feed(order.report())

    def deliver(self, order: VenueOrder) -> None:
        """A venue change the order stream reports (silently lost while the engine drains at shutdown)."""
        self.put(order)
        if self.stream:
            self.feed(order.report())

    def truth(self, cid: str) -> OrderEvent:
        """What fetch_order answers: the venue's order, or not found -> `rejected/other` (engine/_actor.py)."""
        order = self.venue.get(cid)
        if order is None:
            return OrderEvent(cid, OrderStatus.REJECTED, reason=RejectReason.OTHER)
        return order.report()

    def kill_requests(self, choice: str) -> tuple[list[str], list[VenueOrder]]:
        """The actor's (or process's) in-flight requests die: each killed send may or may not have reached
        the venue, each killed cancel may or may not have taken effect (`choice`: one 0/1 per such request,
        in `_killable` order); queries just vanish. Returns the killed sends' client order ids and the
        orders the killed cancels did cancel (the order stream reports those, if it is up)."""
        sends: list[str] = []
        canceled: list[VenueOrder] = []
        bits = choice.removeprefix("kill=").split(" ")[0]
        for (kind, cid), bit in zip(_killable(self.pending, self.venue), bits, strict=True):
            if kind == "send":
                sends.append(cid)
                if bit == "1":
                    self.arrive(cid)
            elif bit == "1":
                order = _with(self.venue[cid], status=OrderStatus.CANCELED)
                self.put(order)
                canceled.append(order)
        self.pending.clear()
        return sends, canceled

    def arrive(self, cid: str) -> None:
        """A send whose answer was lost reached the venue: an entry or exit limit rests, an unwind market
        order fills."""
        intent = self.core.orders[cid].intent
        if intent.purpose is not Purpose.UNWIND:
            self.put(_new_order(intent.client_order_id, intent.role, intent.purpose, intent.side, intent.amount))
        else:
            filled = self.unwind_fill(intent.role, intent.amount)
            if filled > 0:
                status = OrderStatus.CLOSED if filled == intent.amount else OrderStatus.EXPIRED
                self.put(_new_order(cid, intent.role, intent.purpose, intent.side, intent.amount, status, filled))

    def unwind_fill(self, role: LegRole, amount: Decimal) -> Decimal:
        """A reduce-only perp buy fills at most the short position; spot sells draw on the account."""
        if role is LegRole.SPOT:
            return amount
        short = -self.perp_position()
        return max(min(amount, short), ZERO)

    def perp_position(self) -> Decimal:
        return sum((_signed(o) for o in self.venue.values() if o.role is LegRole.PERP), ZERO) + self.liquidated


def _killable(pending: Iterable[tuple[str, str]], venue: dict[str, VenueOrder]) -> list[tuple[str, str]]:
    """Requests in flight whose death matters: every send, and each cancel of an order still open."""
    out = []
    for kind, cid in sorted(pending):
        order = venue.get(cid)
        if kind == "send" or (kind == "cancel" and order is not None and order.status is OrderStatus.OPEN):
            out.append((kind, cid))
    return out


def _new_order(
    cid: str,
    role: LegRole,
    purpose: Purpose,
    side: Side,
    amount: Decimal,
    status: OrderStatus = OrderStatus.OPEN,
    filled: Decimal = ZERO,
) -> VenueOrder:
    return VenueOrder(cid, role, purpose, side, amount, status, filled, _fee(role, side, filled))


def _with(order: VenueOrder, *, status: OrderStatus | None = None, filled: Decimal | None = None) -> VenueOrder:
    filled = order.filled if filled is None else filled
    return VenueOrder(
        order.cid, order.role, order.purpose, order.side, order.amount,
        order.status if status is None else status, filled, _fee(order.role, order.side, filled),
    )  # fmt: skip


def _fee(role: LegRole, side: Side, filled: Decimal) -> Decimal:
    return filled * SPOT_FEE_RATE if role is LegRole.SPOT and side is Side.BUY else ZERO


def _resting_partial(plan: PackagePlan, role: LegRole) -> Decimal:
    """What one partial fill of a resting entry adds: half the package on the perp; on the spot, whose step
    is finer, half plus a quarter perp step (0.00123 of 0.002), off the grid both markets share, as real
    partial fills are (issue 10: every on-grid partial fill hid the trim policy's unhedged perp step)."""
    half = plan.quantity / 2
    if role is not LegRole.SPOT:
        return half
    off = (plan.perp.step * Decimal("0.23") / plan.spot.step).to_integral_value(rounding=ROUND_DOWN) * plan.spot.step
    return half + off


def _half(amount: Decimal, step: Decimal) -> Decimal:
    return (amount / 2 / step).to_integral_value(rounding=ROUND_DOWN) * step


def _describe(c: Command) -> str:
    match c:
        case Transitioned(source=s, trigger=t, dest=d, reason=r):
            return f"transition {s} --{t}--> {d} ({r})"
        case JournalIntent(intent=i):
            return f"journal {i.client_order_id} {i.side} {i.type} {i.amount} {i.symbol}"
        case SendOrder(intent=i):
            return f"send {i.client_order_id}"
        case CancelOrder(client_order_id=cid):
            return f"cancel {cid}"
        case QueryOrder(client_order_id=cid):
            return f"query {cid}"
    return repr(c)  # pragma: no cover - every command type is listed above


# --- the checker ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Node:
    world: World
    parent: int  # -1 for a root
    action: Action | None
    events: tuple[Event, ...]
    commands: tuple[Command, ...]
    depth: int
    state: State
    policy: OrphanPolicy
    exiting: bool = False  # a close was accepted: only flat counts as safe


class ModelChecker:
    """Breadth-first over (core fingerprint, world). Construct, then `run()`."""

    def __init__(self, bounds: Bounds | None = None, *, without: Iterable[str] = (), profile: str = "custom") -> None:
        self.bounds = bounds or Bounds()
        self.profile = profile
        self.without = list(without)
        self.edges = edges_without(parse_edge(w) for w in self.without)
        self.full_map = transition_map(TRANSITIONS)
        self.edge_map = transition_map(self.edges)
        self.limits = tuple(
            1 if name in ("deadlines", "exit_deadlines") else int(getattr(self.bounds, name)) for name in _BUDGETS
        )  # fmt: skip
        self.nodes: list[_Node] = []
        self.report = CheckReport({profile: self.bounds}, self.without)

    # --- driving --------------------------------------------------------------------------------------

    def run(self) -> CheckReport:
        started = time.perf_counter()
        seen: dict[tuple[object, ...], int] = {}
        succ: list[list[int]] = []
        calm: list[list[int]] = []  # successors through non-market actions
        expanded: list[bool] = []
        queue: deque[tuple[int, PackageCore]] = deque()
        for policy in self.bounds.policies:
            core = PackageCore(model_plan(policy, self.bounds.style), edges=self.edges)
            world = World((), (), (0,) * len(_BUDGETS), ZERO, frozenset(), frozenset(), True)
            key = (policy, core.fingerprint(), world)
            idx = self._add(_Node(world, -1, None, (), (), 0, core.state, policy), core)
            seen[key] = idx
            succ.append([])
            calm.append([])
            expanded.append(False)
            queue.append((idx, core))
        depth_limit = self.bounds.depth
        while queue:
            idx, core = queue.popleft()
            node = self.nodes[idx]
            if depth_limit is not None and node.depth >= depth_limit:
                self.report.frontier += 1
                continue
            here = core.fingerprint()
            expanded[idx] = True
            for action in self._enabled(core, node.world):
                self.report.transitions_explored += 1
                step = _Step(self, core.clone(), node.world)
                try:
                    self._apply(action, step, idx)
                except _Violation as v:
                    self._flag(v.prop, v.message, idx, extra=(action, step))
                    continue
                for prop, message in [*step.problems, *self._deadline_problems(step)]:
                    self._flag(prop, message, idx, extra=(action, step))
                world = step.world()
                fingerprint = step.core.fingerprint()
                if fingerprint == here and replace(world, used=node.world.used) == node.world:
                    # Nothing changed but a budget spent: the successor can only do less than this state.
                    continue
                key = (node.policy, fingerprint, world)
                known = seen.get(key)
                if known is None:
                    child = _Node(
                        world, idx, action, tuple(step.events), tuple(step.commands), node.depth + 1,
                        step.core.state, node.policy, step.core.exiting,
                    )  # fmt: skip
                    known = self._add(child, step.core)
                    seen[key] = known
                    succ.append([])
                    calm.append([])
                    expanded.append(False)
                    queue.append((known, step.core))
                succ[idx].append(known)
                if not action.market:
                    calm[idx].append(known)
        self._liveness(succ, calm, expanded)
        self.report.states_explored = len(self.nodes)
        self.report.seconds = time.perf_counter() - started
        self.report.runs.append({
            "profile": self.profile,
            "policies": [p.value for p in self.bounds.policies],
            "states": self.report.states_explored,
            "transitions": self.report.transitions_explored,
            "violations": self.report.violations,
            "deadlocks": self.report.deadlocks,
            "seconds": round(self.report.seconds, 3),
        })  # fmt: skip
        return self.report

    def _add(self, node: _Node, core: PackageCore) -> int:
        idx = len(self.nodes)
        self.nodes.append(node)
        self.report.max_depth = max(self.report.max_depth, node.depth)
        by = self.report.states_by_lifecycle
        by[node.state.value] = by.get(node.state.value, 0) + 1
        for prop, message in self._state_problems(core, node.world):
            self._flag(prop, message, idx, core=core)
        return idx

    # --- what the environment may do ------------------------------------------------------------------

    def _left(self, world: World, budget: str) -> bool:
        i = _SLOT[budget]
        if world.used[i] >= self.limits[i]:
            return False
        cap = self.bounds.accidents
        return budget not in _ACCIDENTS or cap is None or sum(world.used[_SLOT[a]] for a in _ACCIDENTS) < cap

    def _kill_choices(self, world: World, budget: str, kind: str, suffixes: Iterable[str] = ("",)) -> list[Action]:
        """One action per way the in-flight requests can die (see `_Step.kill_requests`)."""
        if not self._left(world, budget):
            return []
        n = len(_killable(world.pending, {o.cid: o for o in world.venue}))
        return [
            Action(kind, arg="kill=" + "".join(bits) + suffix, market=True)
            for suffix in suffixes
            for bits in product("01", repeat=n)
        ]

    def _enabled(self, core: PackageCore, w: World) -> list[Action]:
        state = core.state
        acts: list[Action] = []
        if state is State.FLAT:
            return acts  # terminal: the actor is finished
        if state is State.PENDING:
            acts += [Action("dispatch"), Action("abort")]
            return acts + self._kill_choices(w, "shutdowns", "shutdown") + self._kill_choices(w, "faults", "fault")
        for kind, cid in w.pending:
            intent = core.orders[cid].intent
            order = w.order(cid)
            if kind == "send" and intent.purpose is not Purpose.UNWIND:
                acts.append(Action("ack", cid))
                rejects = _ENTRY_REJECTS if intent.purpose is Purpose.ENTRY else _EXIT_REJECTS[intent.role]
                acts += [Action("reject", cid, r.value) for r in rejects]
                if self._left(w, "timeouts"):
                    acts += [Action("send_timeout", cid, "placed"), Action("send_timeout", cid, "lost")]
            elif kind == "send":
                acts.append(Action("fill", cid))
                if self._left(w, "partial_fills") and _half(intent.amount, core.plan.leg(intent.role).step) > 0:
                    acts.append(Action("partial", cid))
                if self._left(w, "unwind_rejects"):
                    acts.append(Action("reject", cid, _UNWIND_REJECT[intent.role].value))
                if self._left(w, "timeouts"):
                    acts += [Action("send_timeout", cid, "filled"), Action("send_timeout", cid, "lost")]
            elif kind == "cancel":
                acts.append(Action("cancel_answer", cid))
                if self._left(w, "timeouts"):
                    acts.append(Action("cancel_timeout", cid, "kept"))
                    if order is not None and order.status is OrderStatus.OPEN:
                        acts.append(Action("cancel_timeout", cid, "canceled"))
            else:
                acts.append(Action("query_answer", cid))
        for order in w.open_orders():
            step = _resting_partial(core.plan, order.role)
            if self._left(w, "partial_fills") and order.filled + step < order.amount:
                acts.append(Action("rest_partial", order.cid, market=True))
            acts.append(Action("rest_fill", order.cid, market=True))
            if self._left(w, "expiries"):
                acts.append(Action("expire", order.cid, market=True))
        if self._left(w, "stale_reports") and w.stream:
            acts += [Action("stale_ack", o.cid, market=True) for o in w.venue if o.purpose is Purpose.ENTRY]
        short = -w.perp_position()
        if self._left(w, "liquidations") and w.stream and short > 0 and state in (State.HEDGED, State.UNWINDING):
            acts.append(Action("liquidate", arg=str(core.plan.perp.step), market=True))
            if short > core.plan.perp.step:
                acts.append(Action("liquidate", arg=str(short), market=True))
        if state is State.DISPATCHED and w.stream and self._left(w, "deadlines"):
            acts.append(Action("fill_deadline"))
        if state is State.HEDGED and w.stream and self._left(w, "closes"):
            acts += [Action("close", arg="passive", market=True), Action("close", arg="market", market=True)]
        if state is State.UNWINDING and core.exit_passive and w.stream and self._left(w, "exit_deadlines"):
            acts.append(Action("exit_deadline"))
        if w.stream:
            acts += self._kill_choices(w, "shutdowns", "shutdown")
        acts += self._kill_choices(w, "faults", "fault")
        unreachable = [f" unreachable={o.intent.client_order_id}" for o in core.orders.values() if o.live]
        acts += self._kill_choices(w, "crashes", "crash", ["", *(unreachable if self._left(w, "timeouts") else [])])
        return acts

    def _apply(self, a: Action, s: _Step, parent: int) -> None:
        core = s.core
        match a.kind:
            case "dispatch":
                s.feed(Dispatch())
            case "abort":
                s.feed(Abort("model: refused"))
            case "ack":
                s.take("send", a.cid)
                intent = core.orders[a.cid].intent
                s.answer(_new_order(a.cid, intent.role, intent.purpose, intent.side, intent.amount))
            case "reject":
                s.take("send", a.cid)
                if core.orders[a.cid].intent.purpose is Purpose.UNWIND:
                    s.spend("unwind_rejects")
                s.feed(OrderEvent(a.cid, OrderStatus.REJECTED, reason=RejectReason(a.arg)))
            case "send_timeout":
                s.take("send", a.cid)
                s.spend("timeouts")
                if a.arg != "lost":
                    s.arrive(a.cid)
                s.feed(OrderEvent(a.cid, OrderStatus.UNKNOWN))
            case "fill" | "partial":
                s.take("send", a.cid)
                intent = core.orders[a.cid].intent
                amount = intent.amount
                if a.kind == "partial":
                    s.spend("partial_fills")
                    amount = _half(amount, core.plan.leg(intent.role).step)
                filled = s.unwind_fill(intent.role, amount)
                if filled == 0:  # reduce-only with no position left: the venue refuses it
                    s.feed(OrderEvent(a.cid, OrderStatus.REJECTED, reason=RejectReason.REDUCE_ONLY_REJECTED))
                    return
                status = OrderStatus.CLOSED if filled == intent.amount else OrderStatus.EXPIRED
                s.answer(_new_order(a.cid, intent.role, intent.purpose, intent.side, intent.amount, status, filled))
            case "cancel_answer":
                s.take("cancel", a.cid)
                order = s.venue.get(a.cid)
                if order is not None and order.status is OrderStatus.OPEN:
                    s.answer(_with(order, status=OrderStatus.CANCELED))
                else:  # not found (-2011): the engine fetches the order instead
                    s.feed(s.truth(a.cid))
            case "cancel_timeout":
                s.take("cancel", a.cid)
                s.spend("timeouts")
                order = s.venue.get(a.cid)
                if a.arg == "canceled" and order is not None:
                    s.put(_with(order, status=OrderStatus.CANCELED))
                s.feed(OrderEvent(a.cid, OrderStatus.UNKNOWN))
            case "query_answer":
                s.take("query", a.cid)
                s.feed(s.truth(a.cid))
            case "rest_partial" | "rest_fill" | "expire":
                order = s.venue[a.cid]
                exit_perp = order.purpose is Purpose.EXIT and order.role is LegRole.PERP
                if a.kind == "rest_partial":
                    s.spend("partial_fills")
                    more = _resting_partial(core.plan, order.role)
                    if exit_perp:  # reduce-only: never past the short the venue still holds
                        more = max(min(more, -s.perp_position()), ZERO)
                    order = _with(order, filled=order.filled + more)
                elif a.kind == "rest_fill":
                    more = order.amount - order.filled
                    if exit_perp and more > -s.perp_position():
                        # The venue expires a reduce-only order the position no longer covers.
                        more = max(-s.perp_position(), ZERO)
                        order = _with(order, status=OrderStatus.EXPIRED, filled=order.filled + more)
                    else:
                        order = _with(order, status=OrderStatus.CLOSED, filled=order.amount)
                else:
                    s.spend("expiries")
                    order = _with(order, status=OrderStatus.EXPIRED)
                s.deliver(order)
            case "stale_ack":
                s.spend("stale_reports")
                s.feed(OrderEvent(a.cid, OrderStatus.OPEN))
            case "liquidate":
                s.spend("liquidations")
                quantity = Decimal(a.arg)
                s.liquidated += quantity
                s.feed(VenueReduction(quantity))
            case "fill_deadline":
                s.spend("deadlines")
                s.feed(FillDeadline())
            case "close":
                s.spend("closes")
                if a.arg == "passive":
                    s.feed(CloseRequested("model: close", policy="model", spot_price=core.plan.spot.price,
                                          perp_price=core.plan.perp.price))  # fmt: skip
                else:
                    s.feed(CloseRequested("model: close", policy="model"))
            case "exit_deadline":
                s.spend("exit_deadlines")
                s.feed(ExitDeadline())
            case "shutdown":
                # The engine cancels the actor: its requests die, then the shielded drain feeds Shutdown and
                # runs on request/response only; each killed send posts `unknown` (engine/_actor.py).
                s.spend("shutdowns")
                killed, _ = s.kill_requests(a.arg)  # the stream is gone: a killed cancel's effect goes unseen
                s.stream = False
                s.feed(Shutdown())
                for cid in killed:
                    s.feed(OrderEvent(cid, OrderStatus.UNKNOWN))
            case "fault":
                # The actor raised: its requests die, the supervisor rebuilds the core from the package's
                # event log and feeds Fault first; the killed sends' `unknown` reports follow from the mailbox.
                s.spend("faults")
                killed, canceled = s.kill_requests(a.arg)
                if core.state is not State.PENDING:
                    s.core = self._replayed(parent, s.core)
                s.feed(Fault("model: actor raised"))
                for cid in killed:
                    s.feed(OrderEvent(cid, OrderStatus.UNKNOWN))
                if s.stream:
                    for order in canceled:
                        s.feed(order.report())
            case "crash":
                # The process dies: only the journal and the venue survive. A new engine replays the journal,
                # asks the venue about every order not known to be finished and feeds the answers (`unknown`
                # for one it cannot reach), then Recovered: Engine.recover in engine/_engine.py.
                s.spend("crashes")
                s.kill_requests(a.arg)
                s.core = self._replayed(parent, s.core)
                s.stream = True
                _, _, unreachable = a.arg.partition(" unreachable=")
                if unreachable:
                    s.spend("timeouts")
                for cid in [cid for cid, o in s.core.orders.items() if o.live]:
                    s.feed(OrderEvent(cid, OrderStatus.UNKNOWN) if cid == unreachable else s.truth(cid))
                s.feed(Recovered())
            case _:  # pragma: no cover - _enabled only produces the kinds above
                raise AssertionError(f"unknown action {a.kind}")

    def _replayed(self, idx: int, live: PackageCore) -> PackageCore:
        """A fresh core fed the journal (every event fed along the path to node `idx`)."""
        journal: list[Event] = []
        while idx >= 0:
            node = self.nodes[idx]
            journal[:0] = node.events
            idx = node.parent
        fresh = PackageCore(live.plan, edges=self.edges)
        for event in journal:
            fresh.handle(event)
        if fresh.fingerprint() != live.fingerprint():
            raise _Violation("replay", "a fresh core fed the journaled events differs from the live core")
        return fresh

    # --- properties -----------------------------------------------------------------------------------

    def _state_problems(self, core: PackageCore, w: World) -> Iterator[tuple[str, str]]:
        plan = core.plan
        state = core.state
        held, perp = w.spot_held(), w.perp_position()
        quiescent = not w.open_orders() and not w.pending and core.is_quiescent()
        if quiescent and state is not State.UNWINDING and abs(held + perp) >= plan.spot.dust:
            yield "exposure", f"quiescent in {state} with unmatched exposure: spot {held}, perp {perp}"
        if state is State.FLAT:
            if abs(held) >= plan.spot.dust or abs(perp) >= plan.perp.dust:
                yield "flat", f"flat but the venue holds spot {held}, perp {perp}"
            live = [o.cid for o in w.open_orders()] + [cid for kind, cid in w.pending if kind == "send"]
            if live:
                yield "flat", f"flat but orders are open or in flight at the venue: {', '.join(live)}"
        if state is State.HEDGED:
            # Held spot (net of the fee kept in base) level with the short to the spot lot step: the spot buy
            # is grossed up for its fee, so it fills more than the short and holds as much, to the step.
            short = -perp
            if abs(held - short) >= plan.spot.step:
                yield "hedged", f"hedged but the legs differ at the venue: spot holds {held}, perp short {short}"
            if core.exiting:
                yield "exit_flat", "hedged again after a close was accepted: an exit must end flat"
        selling = sum(
            (o.amount - o.filled for o in w.venue
             if o.role is LegRole.SPOT and o.side is Side.SELL and o.status is OrderStatus.OPEN),
            ZERO,
        ) + sum(
            (core.orders[cid].intent.amount for kind, cid in w.pending
             if kind == "send" and core.orders[cid].intent.role is LegRole.SPOT
             and core.orders[cid].intent.side is Side.SELL),
            ZERO,
        )  # fmt: skip
        if held < 0 or selling > held:
            yield "oversell", f"spot sells resting or in flight {selling} while the venue holds {held}"
        if perp > 0:
            yield "oversell", f"the perp was bought back past flat: position {perp}"

    def _deadline_problems(self, step: _Step) -> Iterator[tuple[str, str]]:
        """P5: the exit's deadline bounds its naked time: once it passed, no exit limit may rest without a
        cancel (or, for an order whose outcome is unknown, a query) already asked of the venue."""
        if not any(isinstance(e, ExitDeadline) for e in step.events) or step.core.exit_passive:
            if any(isinstance(e, ExitDeadline) for e in step.events):
                yield "exit_naked", "the exit deadline passed and the exit is still passive"
            return
        asked = {cid for kind, cid in step.pending if kind in ("cancel", "query")}
        for o in step.venue.values():
            if o.purpose is Purpose.EXIT and o.status is OrderStatus.OPEN and o.cid not in asked:
                yield "exit_naked", f"the exit deadline passed and {o.cid} still rests with no cancel asked"

    def _flag(
        self,
        prop: str,
        message: str,
        idx: int,
        *,
        core: PackageCore | None = None,
        extra: tuple[Action, _Step] | None = None,
    ) -> None:
        self.report.counts[prop] += 1
        if prop in self.report.examples:
            return
        trace = self._trace(idx)
        if extra is not None:
            action, step = extra
            trace.append(self._trace_step(action, step.events, step.commands, step.core.state))
            core, world = step.core, step.world()
        else:
            world = self.nodes[idx].world
        assert core is not None
        bad = {"state": core.state.value, "core": _core_summary(core), "venue": world.to_dict()}
        policy = self.nodes[idx].policy.value
        self.report.examples[prop] = Counterexample(prop, message, self.profile, policy, trace, bad)

    def _trace(self, idx: int) -> list[TraceStep]:
        chain: list[_Node] = []
        while idx >= 0:
            chain.append(self.nodes[idx])
            idx = chain[-1].parent
        return [
            self._trace_step(n.action, list(n.events), list(n.commands), n.state)
            for n in reversed(chain)
            if n.action is not None
        ]

    @staticmethod
    def _trace_step(action: Action, events: list[Event], commands: list[Command], state: State) -> TraceStep:
        return TraceStep(action.label(), [e.to_dict() for e in events], [_describe(c) for c in commands], state.value)

    def _liveness(self, succ: list[list[int]], calm: list[list[int]], expanded: list[bool]) -> None:
        """Reverse reachability on the explored graph: which states can reach hedged or flat at all, and
        which can without the market's help. Unexpanded frontier states get the benefit of the doubt."""
        goal = [
            n.state is State.FLAT or (n.state is State.HEDGED and not n.exiting) or not expanded[i]
            for i, n in enumerate(self.nodes)
        ]
        anyway = _backward(goal, succ)
        unaided = _backward(goal, calm)
        for i in range(len(self.nodes)):
            if not anyway[i]:
                self._flag_liveness("deadlock", i)
            elif not unaided[i]:  # a deadlocked state is reported once, as a deadlock
                self._flag_liveness("stuck", i)

    def _flag_liveness(self, prop: str, i: int) -> None:
        node = self.nodes[i]
        self.report.counts[prop] += 1
        if prop in self.report.examples:
            return
        core = self._rebuild(i)
        why = "no path leads to hedged or flat" if prop == "deadlock" else (
            "hedged/flat is reachable only with the market's help (a resting fill, expiry, liquidation, ...)"
        )  # fmt: skip
        bad = {"state": node.state.value, "core": _core_summary(core), "venue": node.world.to_dict()}
        self.report.examples[prop] = Counterexample(
            prop, f"{why}; in {node.state}", self.profile, node.policy.value, self._trace(i), bad
        )

    def _rebuild(self, idx: int) -> PackageCore:
        """The core of node `idx`: every event along its path fed to a fresh core (a fault or crash step
        replaces the core by exactly that replay, checked by the `replay` property)."""
        chain: list[_Node] = []
        while idx >= 0:
            chain.append(self.nodes[idx])
            idx = chain[-1].parent
        core = PackageCore(model_plan(chain[-1].policy, self.bounds.style), edges=self.edges)
        for node in reversed(chain):
            for event in node.events:
                core.handle(event)
        return core


def _backward(goal: list[bool], graph: list[list[int]]) -> list[bool]:
    preds: list[list[int]] = [[] for _ in graph]
    for i, targets in enumerate(graph):
        for j in targets:
            preds[j].append(i)
    good = list(goal)
    todo = [i for i, g in enumerate(good) if g]
    while todo:
        j = todo.pop()
        for i in preds[j]:
            if not good[i]:
                good[i] = True
                todo.append(i)
    return good


_ENTRY_REJECTS: Final = (RejectReason.POST_ONLY_CROSS, RejectReason.INSUFFICIENT_FUNDS, RejectReason.INVALID_ORDER)
# One refusal per exit leg: the core treats every refusal of an exit limit alike (it escalates), so more
# reasons would only multiply states. The reduce-only refusal of a perp buy after a liquidation is covered by
# the unwind's market orders (`_UNWIND_REJECT`) and by the venue's fill cap on resting reduce-only buys.
_EXIT_REJECTS: Final = {LegRole.SPOT: (RejectReason.POST_ONLY_CROSS,), LegRole.PERP: (RejectReason.POST_ONLY_CROSS,)}
_UNWIND_REJECT: Final = {LegRole.SPOT: RejectReason.INSUFFICIENT_FUNDS, LegRole.PERP: RejectReason.REDUCE_ONLY_REJECTED}


def _core_summary(core: PackageCore) -> dict[str, Any]:
    exp = core.exposure()
    return {
        "orders": {
            cid: f"{o.status.value} {o.filled}/{o.intent.amount}"
            + (" cancel_sent" if o.cancel_sent else "")
            + (" query_sent" if o.query_sent else "")
            for cid, o in core.orders.items()
        },
        "exposure": {"spot": str(exp.spot), "perp": str(exp.perp), "unknown": exp.unknown},
        "entry_closing": core.entry_closing,
        "close_all": core.close_all,
        "exiting": core.exiting,
        "exit_passive": core.exit_passive,
    }


def check(
    bounds: Bounds | Mapping[str, Bounds] | None = None,
    *,
    without: Iterable[str] = (),
    depth: int | None = None,
    jobs: int | None = None,
) -> CheckReport:
    """Run the model checker over the real `PackageCore` (minus the `without` edges, e.g. "orphaned:unwind").

    `bounds`: one `Bounds`, named profiles, or None for the default suite `PROFILES`. `depth` overrides every
    profile's depth. Each (profile, orphan policy) pair is an independent exploration; `jobs` > 1 runs them in
    that many processes (default: one per CPU)."""
    without = list(without)
    for w in without:
        parse_edge(w)  # refuse a bad edge before starting any process
    if bounds is None:
        profiles: Mapping[str, Bounds] = PROFILES
    elif isinstance(bounds, Bounds):
        profiles = {"custom": bounds}
    else:
        profiles = bounds
    tasks = [
        (name, replace(b, policies=(policy,), depth=b.depth if depth is None else depth), without)
        for name, b in profiles.items()
        for policy in b.policies
    ]
    started = time.perf_counter()
    workers = min(len(tasks), jobs if jobs is not None else (os.cpu_count() or 1))
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_run_one, tasks))
    else:
        parts = [_run_one(t) for t in tasks]
    report = CheckReport({}, without)
    for part in parts:
        report.merge(part)
    report.bounds = {name: replace(b, depth=b.depth if depth is None else depth) for name, b in profiles.items()}
    report.seconds = time.perf_counter() - started
    return report


def _run_one(task: tuple[str, Bounds, list[str]]) -> CheckReport:
    name, bounds, without = task
    return ModelChecker(bounds, without=without, profile=name).run()
