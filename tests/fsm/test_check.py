"""The model checker (fsm/_check.py): clean on the real core within small bounds, and able to fail — every
property is shown to catch a broken core (edges removed from the table, or core methods sabotaged), with a
counterexample that replays."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from decimal import ROUND_DOWN, Decimal

import pytest

from legguard.domain import OrderStatus
from legguard.fsm import (
    PROFILES,
    PROPERTIES,
    ArmedCancel,
    Bounds,
    CancelOrder,
    CheckReport,
    Command,
    Event,
    ExecutionStyle,
    InvalidTransition,
    OrphanPolicy,
    PackageCore,
    QueryOrder,
    SendOrder,
    State,
    Transitioned,
    Trigger,
    UnknownEdge,
    VenueReduction,
    check,
    edges_without,
    event_from_dict,
    model_plan,
    parse_edge,
)

QUIET = Bounds(
    partial_fills=0, timeouts=0, unwind_rejects=0, expiries=0, liquidations=0, stale_reports=0, crashes=0,
    faults=0, shutdowns=0, closes=0,
)  # fmt: skip


def run(bounds: Bounds = QUIET, *, depth: int | None = None, without: tuple[str, ...] = ()) -> CheckReport:
    return check(bounds, depth=depth, without=without, jobs=1)


# --- the real core is clean --------------------------------------------------------------------------


@pytest.mark.parametrize("profile", list(PROFILES))
def test_each_default_profile_is_clean_to_depth_4(profile: str) -> None:
    report = check({profile: PROFILES[profile]}, depth=4, jobs=1)

    assert report.ok, report.counterexample and report.counterexample.to_dict()
    assert report.states_explored > 200
    assert report.frontier > 0  # the depth bound really cut: this is a partial run
    assert {r["profile"] for r in report.runs} == {profile}
    assert sorted(p for r in report.runs for p in r["policies"]) == ["flatten", "trim"]


def test_one_timeout_to_the_end() -> None:
    report = run(replace(QUIET, timeouts=1))

    assert report.ok
    assert report.frontier == 0
    assert report.states_explored > 1000
    assert set(report.states_by_lifecycle) == {s.value for s in State} - {"orphaned"}  # orphaned never rests


def test_report_is_one_json_object_with_the_promised_keys() -> None:
    data = json.loads(json.dumps(run(depth=5).to_dict()))

    for key in ("states_explored", "transitions_explored", "violations", "deadlocks", "bounds", "counterexample"):
        assert key in data
    assert data["violations"] == data["deadlocks"] == 0
    assert data["counterexample"] is None
    assert set(data["properties"]) == set(PROPERTIES)
    assert data["bounds"]["custom"]["depth"] == 5
    assert data["bounds"]["custom"]["quantity_steps"] == 2


def test_process_pool_gives_the_same_answer() -> None:
    bounds = replace(QUIET, partial_fills=1)

    alone = check(bounds, jobs=1)
    pooled = check(bounds, jobs=2)

    assert pooled.states_explored == alone.states_explored
    assert pooled.transitions_explored == alone.transitions_explored
    assert pooled.ok and alone.ok


# --- removing an edge breaks it, with a counterexample -------------------------------------------------

BREAKING = [
    ("orphaned:unwind", replace(QUIET, timeouts=1), 4),
    ("dispatched:leg_broken", replace(QUIET, timeouts=1), 4),
    ("dispatched:hedge", QUIET, 6),
    ("dispatched:void", QUIET, 6),
    ("pending:dispatch", QUIET, 2),
    ("pending:abort", QUIET, 2),
    ("unwinding:flattened", QUIET, 8),
    ("unwinding:trimmed", replace(QUIET, partial_fills=1, policies=(OrphanPolicy.TRIM,)), 10),
    ("hedged:leg_broken", replace(QUIET, liquidations=1), 8),
    ("hedged:unwind", replace(QUIET, closes=1), 8),
]


@pytest.mark.parametrize(("edge", "bounds", "depth"), BREAKING, ids=[b[0] for b in BREAKING])
def test_removing_an_edge_is_caught_with_a_replayable_counterexample(edge: str, bounds: Bounds, depth: int) -> None:
    report = run(bounds, depth=depth, without=(edge,))

    assert not report.ok
    assert report.violations > 0
    ce = report.counterexample
    assert ce is not None
    assert ce.prop == "transitions"
    source, trigger = parse_edge(edge)
    assert f"trigger {trigger.value!r} is not allowed in state {source.value!r}" in ce.message
    # Replaying the trace's events through a core built without the edge fails on the last one.
    core = PackageCore(model_plan(OrphanPolicy(ce.policy)), edges=edges_without([(source, trigger)]))
    events = [event_from_dict(e) for step in ce.trace for e in step.events]
    for event in events[:-1]:
        core.handle(event)
    with pytest.raises(InvalidTransition):
        core.handle(events[-1])


@pytest.mark.parametrize("edge", ["dispatched:fault", "hedged:fault", "unwinding:fault"])
def test_fault_edges_are_guarded_so_removing_one_stays_safe(edge: str) -> None:
    """The core fires `fault` only when the table allows it; without the edge a fault is handled like any
    other event (in-flight sends become unknown, requests are asked again) and every property holds."""
    report = run(replace(QUIET, faults=1), depth=5, without=(edge,))

    assert report.ok
    assert report.without == [edge]


def test_bad_edges_are_refused_naming_the_value() -> None:
    with pytest.raises(UnknownEdge, match=r"'nope' must be SOURCE:TRIGGER; valid edges: pending:dispatch"):
        parse_edge("nope")
    with pytest.raises(UnknownEdge, match=r"'flat:dispatch' is not in the transition table"):
        parse_edge("flat:dispatch")
    with pytest.raises(UnknownEdge, match=r"'floating:dispatch' names no state/trigger"):
        check(QUIET, without=["floating:dispatch"], jobs=1)


# --- each property catches a sabotaged core ------------------------------------------------------------

Wrap = Callable[[PackageCore, Event, list[Command]], list[Command]]


def sabotage(monkeypatch: pytest.MonkeyPatch, wrap: Wrap) -> None:
    real = PackageCore.handle

    def handle(self: PackageCore, event: Event) -> list[Command]:
        return wrap(self, event, real(self, event))

    monkeypatch.setattr(PackageCore, "handle", handle)


def test_write_ahead_catches_a_send_before_its_intent(monkeypatch: pytest.MonkeyPatch) -> None:
    sabotage(monkeypatch, lambda core, event, out: sorted(out, key=lambda c: not isinstance(c, SendOrder)))

    report = run(depth=3)

    assert report.counts["write_ahead"] > 0
    assert "before its JournalIntent" in report.examples["write_ahead"].message


def test_write_ahead_catches_a_client_order_id_sent_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    def resend(core: PackageCore, event: Event, out: list[Command]) -> list[Command]:
        return out + [c for c in out if isinstance(c, SendOrder)]

    sabotage(monkeypatch, resend)

    assert "sent twice" in run(depth=3).examples["write_ahead"].message


def test_armed_catches_a_cancel_armed_that_the_answers_step_does_not_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def arm_every_send(core: PackageCore) -> list[ArmedCancel]:  # promises a cancel for every resting answer
        return [ArmedCancel(o.intent.client_order_id, refused=False, order=o.intent) for o in core.orders.values()
                if o.status is OrderStatus.SUBMITTING]  # fmt: skip

    monkeypatch.setattr(PackageCore, "cancels_on_answer", arm_every_send)

    report = run(depth=3)

    assert report.counts["armed"] > 0
    assert "armed for" in report.examples["armed"].message and "not commanded" in report.examples["armed"].message


def test_transitions_catches_an_undocumented_transitioned_command(monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = Transitioned(State.FLAT, Trigger.DISPATCH, State.PENDING, "resurrected")
    sabotage(monkeypatch, lambda core, event, out: [*out, bogus] if core.state is State.FLAT else out)

    report = run(depth=6)

    assert report.counts["transitions"] > 0
    assert "flat --dispatch--> pending is not in the table" in report.examples["transitions"].message


def test_errors_catches_the_core_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(core: PackageCore, event: Event, out: list[Command]) -> list[Command]:
        if isinstance(event, VenueReduction):
            raise ValueError("cannot cope")
        return out

    sabotage(monkeypatch, explode)

    report = run(replace(QUIET, liquidations=1), depth=8)

    assert report.counts["errors"] > 0
    assert "ValueError: cannot cope" in report.examples["errors"].message


def test_flat_and_exposure_catch_an_unwind_that_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PackageCore, "_unwind_todo", lambda self: {})

    report = run(depth=8)

    assert report.counts["flat"] > 0
    assert report.counts["exposure"] > 0
    assert "flat but the venue holds" in report.examples["flat"].message


def test_hedged_catches_the_old_trim_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-fix `_matched` (entry fills only) leaves a naked spot long 'hedged' after trim + liquidation."""

    def old_matched(self: PackageCore) -> Decimal:
        from legguard.fsm import LegRole

        matched = min(self._entry_filled(LegRole.SPOT), self._entry_filled(LegRole.PERP) - self.venue_reduced)
        grid = self.plan.perp.step  # rounded like today's, so only the liquidation bug is left in
        return (matched / grid).to_integral_value(rounding=ROUND_DOWN) * grid

    monkeypatch.setattr(PackageCore, "_matched", old_matched)
    bounds = replace(QUIET, partial_fills=1, expiries=1, liquidations=1, policies=(OrphanPolicy.TRIM,))

    report = run(bounds)

    assert report.counts["hedged"] > 0
    assert "hedged but the legs differ at the venue" in report.examples["hedged"].message
    assert [s.action for s in report.examples["hedged"].trace][-1].startswith("liquidate")


def test_hedged_catches_trim_off_the_common_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10, defect 3: `_matched` without rounding to the grid both markets share ends "hedged" with
    the perp one step short of covered; the checker's off-grid spot partial fill (0.00123) finds it."""

    def unrounded(self: PackageCore) -> Decimal:
        from legguard.fsm import LegRole

        return min(
            self._entry_filled(LegRole.SPOT) - self._unwound(LegRole.SPOT),
            self._entry_filled(LegRole.PERP) - self.venue_reduced - self._unwound(LegRole.PERP),
        )

    monkeypatch.setattr(PackageCore, "_matched", unrounded)
    bounds = replace(QUIET, partial_fills=1, expiries=1, policies=(OrphanPolicy.TRIM,))

    report = run(bounds)

    assert report.counts["hedged"] > 0
    assert "spot holds 0.00122877, perp short 0.002" in report.examples["hedged"].message


def test_deadlock_catches_unknowns_never_queried(monkeypatch: pytest.MonkeyPatch) -> None:
    sabotage(monkeypatch, lambda core, event, out: [c for c in out if not isinstance(c, QueryOrder)])

    report = run(replace(QUIET, timeouts=1))

    assert report.deadlocks > 0
    assert report.examples["deadlock"].bad_state["core"]["exposure"]["unknown"] is True


def test_stuck_catches_orders_nobody_cancels(monkeypatch: pytest.MonkeyPatch) -> None:
    sabotage(monkeypatch, lambda core, event, out: [c for c in out if not isinstance(c, CancelOrder)])

    report = run()

    assert report.counts["stuck"] > 0
    assert report.deadlocks == 0  # a fill can still end it: the market's help, not the engine's
    assert not report.ok


def test_replay_catches_a_core_that_is_not_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = iter(range(10**9))

    def moody(core: PackageCore, event: Event, out: list[Command]) -> list[Command]:
        if next(calls) % 2:
            core.close_all = not core.close_all  # state that depends on more than the events
        return out

    sabotage(monkeypatch, moody)

    report = run(replace(QUIET, faults=1), depth=4)

    assert report.counts["replay"] > 0
    assert report.examples["replay"].trace[-1].action.startswith("fault")


def test_counterexamples_are_the_shortest() -> None:
    report = run(replace(QUIET, timeouts=1), without=("orphaned:unwind",))

    ce = report.counterexample
    assert ce is not None
    assert [s.action for s in ce.trace] == ["dispatch", "send_timeout lg-mc-PE0 placed"]
    assert ce.bad_state["state"] == "orphaned"
    assert ce.bad_state["venue"]["orders"] == {"lg-mc-PE0": "open 0/0.002"}
    assert isinstance(ce.trace[0].commands[0], str)
    assert (
        ce.trace[0].commands[0] == "journal lg-mc-SE0 buy limit 0.00201 BTC/USDT"
    )  # grossed up; described, not objects


@pytest.mark.fuzz
def test_default_suite_is_clean() -> None:
    """The acceptance run of `legguard fsm --check` (a few minutes on 2 CPUs since exits joined it)."""
    report = check()

    assert report.ok, report.counterexample and report.counterexample.to_dict()
    assert report.states_explored >= 90_000
    assert report.violations == report.deadlocks == report.counts["stuck"] == 0


@pytest.mark.slow
def test_two_accidents_per_path_without_market_trouble() -> None:
    """Wider than the default: two accidents on one path (a fault during a crash recovery's unwind, ...)."""
    bounds = replace(QUIET, partial_fills=1, timeouts=1, crashes=1, faults=1, shutdowns=1, accidents=2)

    report = check(bounds)

    assert report.ok, report.counterexample and report.counterexample.to_dict()
    assert report.states_explored > 100_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"faults": -1}, "Bounds.faults must be a whole number >= 0, got -1"),
        ({"depth": 1.5}, "Bounds.depth must be a whole number >= 0, got 1.5"),
        ({"policies": ()}, "Bounds.policies must be a non-empty tuple of OrphanPolicy, got ()"),
    ],
)
def test_bad_bounds_are_refused_naming_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Bounds(**change)  # type: ignore[arg-type]


# --- exits (issue 12) ----------------------------------------------------------------------------------

EXITS = replace(QUIET, closes=1)


def test_exits_are_clean_to_the_end_and_reach_every_phase() -> None:
    report = run(replace(EXITS, partial_fills=1, expiries=1))

    assert report.ok, report.counterexample and report.counterexample.to_dict()
    assert report.frontier == 0
    assert report.states_by_lifecycle.get("unwinding", 0) > 100


def test_exit_naked_catches_a_deadline_that_leaves_the_exit_resting(monkeypatch: pytest.MonkeyPatch) -> None:
    from legguard.fsm import ExitDeadline

    real = PackageCore.handle

    def deaf(self: PackageCore, event: Event) -> list[Command]:
        return [] if isinstance(event, ExitDeadline) else real(self, event)

    monkeypatch.setattr(PackageCore, "handle", deaf)

    report = run(EXITS)

    assert report.counts["exit_naked"] > 0
    assert "exit deadline passed" in report.examples["exit_naked"].message
    assert report.examples["exit_naked"].trace[-1].action == "exit_deadline"


def test_exit_naked_catches_an_escalation_that_cancels_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    sabotage(monkeypatch, lambda core, event, out: [c for c in out if not isinstance(c, CancelOrder)])

    report = run(EXITS)

    assert report.counts["exit_naked"] > 0
    assert "still rests with no cancel asked" in report.examples["exit_naked"].message


def test_oversell_catches_an_exit_that_sells_what_the_fee_took(monkeypatch: pytest.MonkeyPatch) -> None:
    from legguard.fsm import LegRole

    def greedy(self: PackageCore) -> dict[LegRole, Decimal]:
        # the spot leg as bought, ignoring the fee charged in base: more than is held
        return {LegRole.SPOT: self._entry_filled(LegRole.SPOT), LegRole.PERP: -self.exposure().perp}

    monkeypatch.setattr(PackageCore, "_unwind_todo", greedy)

    report = run(EXITS, depth=8)

    assert report.counts["oversell"] > 0
    assert "while the venue holds" in report.examples["oversell"].message


def test_exit_flat_catches_an_exit_that_trims_back_to_hedged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PackageCore, "_trimming", lambda self: self.plan.policy is OrphanPolicy.TRIM)
    bounds = replace(EXITS, partial_fills=1, policies=(OrphanPolicy.TRIM,))

    report = run(bounds)

    assert report.counts["exit_flat"] > 0
    assert "an exit must end flat" in report.examples["exit_flat"].message


def test_removing_the_escalate_edge_is_caught() -> None:
    report = run(EXITS, without=("unwinding:escalate",))

    assert not report.ok
    assert report.counts["transitions"] > 0
    assert "trigger 'escalate' is not allowed in state 'unwinding'" in report.examples["transitions"].message


@pytest.mark.parametrize("style", [ExecutionStyle.MAKER_TAKER, ExecutionStyle.TAKER_TAKER])
def test_the_other_execution_styles_are_clean_under_one_timeout_and_partial_fills(style: ExecutionStyle) -> None:
    """The same lifecycle and properties with a taker leg: maker-taker hedges each batch of maker fills."""
    report = run(replace(QUIET, timeouts=1, partial_fills=1, style=style))

    assert report.ok, report.counterexample and report.counterexample.to_dict()
    assert report.frontier == 0 and report.deadlocks == report.counts["stuck"] == 0
    assert report.states_explored > 1000
    assert report.bounds["custom"].to_dict()["style"] == style.value


@pytest.mark.fuzz
@pytest.mark.parametrize("style", [ExecutionStyle.MAKER_TAKER, ExecutionStyle.TAKER_TAKER])
def test_default_suite_is_clean_in_every_style(style: ExecutionStyle) -> None:
    report = check({name: replace(b, style=style) for name, b in PROFILES.items()})

    assert report.ok, report.counterexample and report.counterexample.to_dict()
    assert report.violations == report.deadlocks == report.counts["stuck"] == 0
