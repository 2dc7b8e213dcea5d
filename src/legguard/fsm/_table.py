"""The package lifecycle as data: ONE transition table that drives the `transitions.Machine`, renders the
docs diagram and feeds the model checker.

Trigger names are a public contract: the journal, `legguard audit` and external tools name them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final

from transitions import Machine, MachineError


class State(enum.StrEnum):
    PENDING = "pending"
    DISPATCHED = "dispatched"
    HEDGED = "hedged"
    ORPHANED = "orphaned"
    UNWINDING = "unwinding"
    FLAT = "flat"


class Trigger(enum.StrEnum):
    DISPATCH = "dispatch"
    ABORT = "abort"
    HEDGE = "hedge"
    VOID = "void"
    LEG_BROKEN = "leg_broken"
    FAULT = "fault"
    UNWIND = "unwind"
    FLATTENED = "flattened"
    TRIMMED = "trimmed"
    ESCALATE = "escalate"


@dataclass(frozen=True, slots=True)
class Edge:
    source: State
    trigger: Trigger
    dest: State
    why: str


S, T = State, Trigger

# (source, trigger) -> dest. The only place the lifecycle is defined.
TRANSITIONS: Final[tuple[Edge, ...]] = (
    Edge(S.PENDING, T.DISPATCH, S.DISPATCHED, "both leg intents journaled; both orders being sent"),
    # Refused before any order left: risk limits, engine halted, stale book, spread too thin after fees.
    Edge(S.PENDING, T.ABORT, S.FLAT, "refused before any order"),
    # Fills decide, never acks: both legs must have FILLED the same base quantity.
    Edge(S.DISPATCHED, T.HEDGE, S.HEDGED, "both legs filled, spot held == perp short to the spot step"),
    Edge(S.DISPATCHED, T.VOID, S.FLAT, "both legs terminal with zero fills"),
    # The leg-risk edge: one leg is dead or its outcome unknown while the other may hold exposure. Also taken
    # on any deadline or cancellation that leaves fills unmatched or unknown.
    Edge(S.DISPATCHED, T.LEG_BROKEN, S.ORPHANED, "one leg failed or unknown while the other may have fills"),
    Edge(S.DISPATCHED, T.FAULT, S.ORPHANED, "the package actor raised; supervisor routes it to the kill switch"),
    # Real world possibility: the venue reduces the perp leg by itself (liquidation, auto-deleverage).
    Edge(S.HEDGED, T.LEG_BROKEN, S.ORPHANED, "the venue reduced a leg (liquidation / ADL)"),
    # An exit: both closing legs go out together as post-only limits priced from L2 (the passive phase).
    Edge(S.HEDGED, T.UNWIND, S.UNWINDING, "close requested (exit policy, margin guard, operator): passive exit"),
    Edge(S.HEDGED, T.FAULT, S.ORPHANED, "supervisor"),
    Edge(S.ORPHANED, T.UNWIND, S.UNWINDING, "kill switch engages, immediately and automatically"),
    Edge(S.UNWINDING, T.FLATTENED, S.FLAT, "venue shows zero net and gross exposure, no open orders"),
    # The passive phase ends on the first sign of trouble: a leg refused, expired, cancelled or unknown, the exit
    # or leg deadline, a shutdown, a recovery or a venue reduction. Nothing rests passively after this.
    Edge(S.UNWINDING, T.ESCALATE, S.UNWINDING, "passive exit failed, overdue or interrupted: aggressive orders"),
    Edge(S.UNWINDING, T.TRIMMED, S.HEDGED, "policy trim: unmatched residual closed, matched part stays hedged"),
    Edge(S.UNWINDING, T.FAULT, S.ORPHANED, "supervisor; the kill switch restarts"),
)

TERMINAL_STATES: Final = frozenset({State.FLAT})


class InvalidTransition(Exception):
    """A (state, trigger) pair that the table does not define."""

    def __init__(self, state: State | str, trigger: Trigger | str, package_id: str = "") -> None:
        self.state = State(state)
        self.trigger = Trigger(trigger)
        self.package_id = package_id
        who = f"package {package_id}: " if package_id else ""
        super().__init__(f"{who}trigger {self.trigger.value!r} is not allowed in state {self.state.value!r}")


def transition_map(edges: Iterable[Edge] = TRANSITIONS) -> dict[tuple[State, Trigger], State]:
    return {(e.source, e.trigger): e.dest for e in edges}


class Lifecycle:
    """One package's lifecycle, enforced by a `transitions.Machine` built from the table.

    The machine is the single authority on which trigger may fire; everything else reads `state`. One
    machine per table serves every package (each `Lifecycle` is a model it drives without being bound to
    it): building a `Machine` per package cost ~250 µs and ~20 KB, the largest share of a package's cost.
    """

    state: str  # maintained by transitions

    _machines: ClassVar[dict[tuple[Edge, ...], Machine]] = {}

    def __init__(
        self,
        initial: State = State.PENDING,
        *,
        edges: Iterable[Edge] = TRANSITIONS,
        package_id: str = "",
    ) -> None:
        self.package_id = package_id
        self._edges = tuple(edges)
        self._allowed = _allowed_for(self._edges)
        self._machine = self._machine_for(self._edges)
        self.state = State(initial).value

    @classmethod
    def _machine_for(cls, edges: tuple[Edge, ...]) -> Machine:
        machine = cls._machines.get(edges)
        if machine is None:
            machine = Machine(
                model=None,
                states=[s.value for s in State],
                transitions=[
                    {"trigger": e.trigger.value, "source": e.source.value, "dest": e.dest.value} for e in edges
                ],
                initial=State.PENDING.value,
                auto_transitions=False,
                ignore_invalid_triggers=False,
                model_attribute="state",
            )
            cls._machines[edges] = machine
        return machine

    @property
    def current(self) -> State:
        return State(self.state)

    def can(self, trigger: Trigger) -> bool:
        return (self.current, trigger) in self._allowed

    def fire(self, trigger: Trigger) -> tuple[State, State]:
        """Fire `trigger`; return (source, dest). Raises InvalidTransition for any pair not in the table."""
        source = self.current
        if (source, trigger) not in self._allowed:
            raise InvalidTransition(source, trigger, self.package_id)
        try:
            if not self._machine.events[trigger.value].trigger(self):
                raise InvalidTransition(source, trigger, self.package_id)
        except MachineError as exc:  # pragma: no cover - the check above makes this unreachable
            raise InvalidTransition(source, trigger, self.package_id) from exc
        return source, self.current


_ALLOWED: dict[tuple[Edge, ...], dict[tuple[State, Trigger], State]] = {}


def _allowed_for(edges: tuple[Edge, ...]) -> dict[tuple[State, Trigger], State]:
    allowed = _ALLOWED.get(edges)
    if allowed is None:
        allowed = _ALLOWED[edges] = transition_map(edges)
    return allowed


def render_table(edges: Iterable[Edge] = TRANSITIONS) -> str:
    rows = ["| source | trigger | dest | when |", "|---|---|---|---|"]
    rows += [f"| {e.source} | {e.trigger} | {e.dest} | {e.why} |" for e in edges]
    return "\n".join(rows) + "\n"


def render_mermaid(edges: Iterable[Edge] = TRANSITIONS) -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {State.PENDING.value}"]
    lines += [f"    {e.source} --> {e.dest}: {e.trigger}" for e in edges]
    lines += [f"    {s.value} --> [*]" for s in State if s in TERMINAL_STATES]
    return "\n".join(lines) + "\n"
