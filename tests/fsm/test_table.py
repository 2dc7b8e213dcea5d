"""The transition table, pynetdicom style: every (state, trigger) pair either is in the table and fires to
its destination, or raises `InvalidTransition` naming both; nothing is silently accepted."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import legguard.fsm
from legguard.fsm import (
    TERMINAL_STATES,
    TRANSITIONS,
    Edge,
    InvalidTransition,
    Lifecycle,
    State,
    Trigger,
    edges_without,
    lifecycle_machine,
    machine_dest,
    machine_moves,
    render_mermaid,
    render_table,
    transition_map,
)

TABLE = transition_map()
PAIRS = [(s, t) for s in State for t in Trigger]
DOCUMENTED = [p for p in PAIRS if p in TABLE]
UNDOCUMENTED = [p for p in PAIRS if p not in TABLE]


def test_the_pairs_split_into_documented_and_forbidden() -> None:
    assert len(PAIRS) == len(State) * len(Trigger) == 60
    assert len(DOCUMENTED) == len(TRANSITIONS) == 14
    assert len(UNDOCUMENTED) == 46


def test_the_table_defines_each_pair_once() -> None:
    pairs = [(e.source, e.trigger) for e in TRANSITIONS]
    assert len(pairs) == len(set(pairs))


@pytest.mark.parametrize(("state", "trigger"), DOCUMENTED, ids=[f"{s}-{t}" for s, t in DOCUMENTED])
def test_documented_pair_fires_to_its_destination(state: State, trigger: Trigger) -> None:
    lifecycle = Lifecycle(state)

    assert lifecycle.can(trigger)
    assert lifecycle.fire(trigger) == (state, TABLE[(state, trigger)])
    assert lifecycle.current is TABLE[(state, trigger)]


@pytest.mark.parametrize(("state", "trigger"), UNDOCUMENTED, ids=[f"{s}-{t}" for s, t in UNDOCUMENTED])
def test_undocumented_pair_raises_naming_both(state: State, trigger: Trigger) -> None:
    lifecycle = Lifecycle(state, package_id="P000042")

    assert not lifecycle.can(trigger)
    with pytest.raises(InvalidTransition) as info:
        lifecycle.fire(trigger)

    assert info.value.state is state
    assert info.value.trigger is trigger
    assert str(info.value) == f"package P000042: trigger {trigger.value!r} is not allowed in state {state.value!r}"
    assert lifecycle.current is state  # a refused trigger changes nothing


def test_flat_is_the_only_terminal_state() -> None:
    assert {State.FLAT} == TERMINAL_STATES
    assert not [e for e in TRANSITIONS if e.source is State.FLAT]
    assert {e.source for e in TRANSITIONS} == set(State) - TERMINAL_STATES


def test_every_state_is_reachable_and_can_reach_flat() -> None:
    reach = {State.PENDING}
    while True:
        more = {e.dest for e in TRANSITIONS if e.source in reach} - reach
        if not more:
            break
        reach |= more
    assert reach == set(State)
    back = {State.FLAT}
    while True:
        more = {e.source for e in TRANSITIONS if e.dest in back} - back
        if not more:
            break
        back |= more
    assert back == set(State)


def test_every_edge_says_why() -> None:
    assert all(e.why.strip() for e in TRANSITIONS)


def test_trigger_and_state_names_are_a_public_contract() -> None:
    """The journal, `legguard audit` and external tools name these: add names, never rename."""
    assert [t.value for t in Trigger] == [
        "dispatch", "abort", "hedge", "void", "leg_broken", "fault", "unwind", "flattened", "trimmed", "escalate",
    ]  # fmt: skip
    assert [s.value for s in State] == ["pending", "dispatched", "hedged", "orphaned", "unwinding", "flat"]


def test_a_lifecycle_built_without_an_edge_refuses_it() -> None:
    edges = edges_without([(State.ORPHANED, Trigger.UNWIND)])
    lifecycle = Lifecycle(State.ORPHANED, edges=edges)

    assert len(edges) == len(TRANSITIONS) - 1
    with pytest.raises(InvalidTransition, match="'unwind' is not allowed in state 'orphaned'"):
        lifecycle.fire(Trigger.UNWIND)
    assert Lifecycle(State.ORPHANED).fire(Trigger.UNWIND) == (State.ORPHANED, State.UNWINDING)


# --- transitions.Machine stays the authority; the hot path reads a map taken from it (issue 16) ----------


class _Model:
    state: str


def _machine_allows(edges: tuple[Edge, ...], state: State, trigger: Trigger) -> State | None:
    """Ask a fresh `transitions.Machine` bound to a model, the textbook way, independent of `machine_dest`."""
    from transitions import Machine, MachineError

    model = _Model()
    Machine(
        model=model, states=[s.value for s in State], initial=state.value, auto_transitions=False,
        transitions=[{"trigger": e.trigger.value, "source": e.source.value, "dest": e.dest.value} for e in edges],
    )  # fmt: skip
    if not hasattr(model, trigger.value):
        return None
    try:
        assert getattr(model, trigger.value)()
    except MachineError:
        return None
    return State(model.state)


TABLES = {"full": TRANSITIONS, "without orphaned:unwind": edges_without([(State.ORPHANED, Trigger.UNWIND)]),
          "without every unwind": tuple(e for e in TRANSITIONS if e.trigger is not Trigger.UNWIND)}  # fmt: skip


@pytest.mark.parametrize("name", list(TABLES))
def test_the_lifecycle_map_is_exactly_what_the_machine_allows(name: str) -> None:
    edges = TABLES[name]
    machine = lifecycle_machine(edges)
    expected = {(s, t): d for s in State for t in Trigger if (d := _machine_allows(edges, s, t)) is not None}

    assert machine_moves(edges) == expected == transition_map(edges)
    for state in State:
        for trigger in Trigger:
            assert machine_dest(machine, state, trigger) == expected.get((state, trigger))
            lifecycle = Lifecycle(state, edges=edges)
            assert lifecycle.can(trigger) == ((state, trigger) in expected)
            if (state, trigger) in expected:
                assert lifecycle.fire(trigger) == (state, expected[(state, trigger)])
            else:
                with pytest.raises(InvalidTransition):
                    lifecycle.fire(trigger)


def test_the_map_is_read_off_the_machine_not_the_table() -> None:
    """An edge only the machine knows about is allowed, and one it lost is refused: the machine decides."""
    edges = tuple(TRANSITIONS[:2])
    machine = lifecycle_machine(edges)
    machine.add_transition(Trigger.HEDGE.value, State.PENDING.value, State.HEDGED.value)
    try:
        assert machine_moves(edges)[(State.PENDING, Trigger.HEDGE)] is State.HEDGED
        assert machine_dest(machine, State.PENDING, Trigger.HEDGE) is State.HEDGED
    finally:
        machine.remove_transition(Trigger.HEDGE.value, State.PENDING.value, State.HEDGED.value)
    assert (State.PENDING, Trigger.HEDGE) not in machine_moves(edges)


def test_a_copied_lifecycle_moves_on_its_own() -> None:
    lifecycle = Lifecycle(State.DISPATCHED, package_id="P1")
    twin = lifecycle.copy()

    assert twin.fire(Trigger.HEDGE) == (State.DISPATCHED, State.HEDGED)
    assert lifecycle.current is State.DISPATCHED and twin.current is State.HEDGED
    assert twin.package_id == "P1"


def test_renderers_show_every_edge() -> None:
    table = render_table().splitlines()
    mermaid = render_mermaid().splitlines()

    assert table[0] == "| source | trigger | dest | when |"
    assert table[2:] == [f"| {e.source} | {e.trigger} | {e.dest} | {e.why} |" for e in TRANSITIONS]
    assert mermaid[:2] == ["stateDiagram-v2", "    [*] --> pending"]
    assert mermaid[2:-1] == [f"    {e.source} --> {e.dest}: {e.trigger}" for e in TRANSITIONS]
    assert mermaid[-1] == "    flat --> [*]"


def test_renderers_follow_a_reduced_table() -> None:
    edges = [Edge(State.PENDING, Trigger.ABORT, State.FLAT, "only")]
    assert render_table(edges).splitlines()[2:] == ["| pending | abort | flat | only |"]
    assert "dispatch" not in render_mermaid(edges)


# --- the export surface ---------------------------------------------------------------------------------


def _declared_reexports() -> dict[str, str]:
    """`from ._x import Name as Name` lines of legguard/fsm/__init__.py: name -> private module."""
    tree = ast.parse(Path(inspect.getfile(legguard.fsm)).read_text())
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                assert alias.asname == alias.name, f"re-export {alias.name} must use 'as {alias.name}'"
                out[alias.name] = f"legguard.fsm.{node.module}"
    return out


def test_export_surface_is_what_init_declares() -> None:
    declared = _declared_reexports()
    public = {
        name
        for name, value in vars(legguard.fsm).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }

    assert public == set(declared)
    assert all(module.rsplit(".", 1)[1].startswith("_") for module in declared.values())
    for name, module in declared.items():
        value = getattr(legguard.fsm, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == module, name


def test_init_docstring_maps_every_private_module() -> None:
    doc = legguard.fsm.__doc__ or ""
    for module in {m.rsplit(".", 1)[1] for m in _declared_reexports().values()}:
        assert f"`{module}.py`" in doc
