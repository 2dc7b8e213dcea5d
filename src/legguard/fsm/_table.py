"""The package lifecycle as data: ONE transition table that drives the `transitions.Machine`, renders the
docs diagram and feeds the model checker.

Trigger names are a public contract: the journal, `legguard audit` and external tools name them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

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
    """One package's lifecycle: a state and the moves its table allows.

    The `transitions.Machine` built from the table is the single authority on which trigger may fire: the
    (state, trigger) -> dest map a lifecycle consults is read off that machine, once per table, by firing
    every trigger of the machine from every state (`machine_moves`); nothing else decides a move. Firing is
    then one dictionary look-up: driving the machine per trigger cost ~100 µs a step, and building one per
    package ~250 µs and ~20 KB. A test holds the map equal to what the machine allows for every pair.
    """

    __slots__ = ("_moves", "package_id", "state")

    def __init__(
        self,
        initial: State = State.PENDING,
        *,
        edges: Iterable[Edge] = TRANSITIONS,
        package_id: str = "",
    ) -> None:
        self.package_id = package_id
        self._moves = _moves_for(edges)
        self.state = State(initial)

    @property
    def current(self) -> State:
        return self.state

    def can(self, trigger: Trigger) -> bool:
        return (self.state, trigger) in self._moves

    def fire(self, trigger: Trigger) -> tuple[State, State]:
        """Fire `trigger`; return (source, dest). Raises InvalidTransition for any pair not in the table."""
        source = self.state
        dest = self._moves.get((source, trigger))
        if dest is None:
            raise InvalidTransition(source, trigger, self.package_id)
        self.state = dest
        return source, dest

    def copy(self) -> Lifecycle:
        """An independent lifecycle in the same state, sharing the (immutable) moves of its table."""
        twin = Lifecycle.__new__(Lifecycle)
        twin.state, twin.package_id, twin._moves = self.state, self.package_id, self._moves
        return twin


_MACHINES: dict[tuple[Edge, ...], Machine] = {}
_MOVES: dict[tuple[Edge, ...], dict[tuple[State, Trigger], State]] = {}


def lifecycle_machine(edges: Iterable[Edge] = TRANSITIONS) -> Machine:
    """The `transitions.Machine` of a table (one per table, shared: it drives no package itself)."""
    edges = tuple(edges)
    machine = _MACHINES.get(edges)
    if machine is None:
        machine = _MACHINES[edges] = Machine(
            model=None,
            states=[s.value for s in State],
            transitions=[{"trigger": e.trigger.value, "source": e.source.value, "dest": e.dest.value} for e in edges],
            initial=State.PENDING.value,
            auto_transitions=False,
            ignore_invalid_triggers=False,
            model_attribute="state",
        )
    return machine


class _Probe:
    """A throw-away model the machine moves, to learn where a trigger leads from a state."""

    state: str


def machine_dest(machine: Machine, state: State, trigger: Trigger) -> State | None:
    """Where `machine` takes a model in `state` on `trigger`, or None if it refuses the trigger there."""
    event = machine.events.get(trigger.value)
    if event is None:
        return None  # no edge of the table uses this trigger at all
    probe = _Probe()
    probe.state = state.value
    try:
        if not event.trigger(probe):
            return None
    except MachineError:
        return None
    return State(probe.state)


def machine_moves(edges: Iterable[Edge] = TRANSITIONS) -> dict[tuple[State, Trigger], State]:
    """The (state, trigger) -> dest map of every move the table's machine allows, asked of the machine."""
    machine = lifecycle_machine(edges)
    moves: dict[tuple[State, Trigger], State] = {}
    for state in State:
        for trigger in Trigger:
            dest = machine_dest(machine, state, trigger)
            if dest is not None:
                moves[(state, trigger)] = dest
    return moves


def _moves_for(edges: Iterable[Edge]) -> dict[tuple[State, Trigger], State]:
    if edges is TRANSITIONS and _DEFAULT_MOVES is not None:
        return _DEFAULT_MOVES  # every engine package: no hashing of the table
    key = tuple(edges)
    moves = _MOVES.get(key)
    if moves is None:
        moves = _MOVES[key] = machine_moves(key)
    return moves


_DEFAULT_MOVES: dict[tuple[State, Trigger], State] | None = None
_DEFAULT_MOVES = _moves_for(TRANSITIONS)


def render_table(edges: Iterable[Edge] = TRANSITIONS) -> str:
    rows = ["| source | trigger | dest | when |", "|---|---|---|---|"]
    rows += [f"| {e.source} | {e.trigger} | {e.dest} | {e.why} |" for e in edges]
    return "\n".join(rows) + "\n"


def render_mermaid(edges: Iterable[Edge] = TRANSITIONS) -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {State.PENDING.value}"]
    lines += [f"    {e.source} --> {e.dest}: {e.trigger}" for e in edges]
    lines += [f"    {s.value} --> [*]" for s in State if s in TERMINAL_STATES]
    return "\n".join(lines) + "\n"
