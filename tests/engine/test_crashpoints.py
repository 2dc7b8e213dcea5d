"""Crash points: `LEGGUARD_CRASH_AT` parsing, the n-th passage rule, and which core steps each point fires on
(the real SIGKILL is exercised by the crash harness)."""

from __future__ import annotations

import signal
from decimal import Decimal
from types import SimpleNamespace
from typing import cast

import pytest
import trio

from legguard.domain import OrderStatus, OrderUpdate, Side
from legguard.engine import Engine, _crashpoints, _engine
from legguard.engine._crashpoints import POINTS, CrashPointError, parse
from legguard.fsm import Dispatch, LegPlan, LegRole, OrderEvent, PackageCore, PackagePlan, Purpose


def test_parse_names_points_and_counts() -> None:
    assert parse("") is None and parse("  ") is None
    assert parse("after_send") == ("after_send", 1)
    assert parse("mid_unwind:3") == ("mid_unwind", 3)


@pytest.mark.parametrize("text", ["after_sned", "hedged:0", "hedged:x", "hedged:-1"])
def test_a_bad_value_is_refused_with_the_variable_named(text: str) -> None:
    with pytest.raises(CrashPointError, match=r"LEGGUARD_CRASH_AT: '.*'"):
        parse(text)


def test_the_harness_points_all_exist() -> None:
    assert set(POINTS) >= {"after_intent", "after_send", "one_leg_filled", "one_leg_rejected", "mid_unwind",
                           "hedged", "during_recovery", "group_committed"}  # fmt: skip
    assert _crashpoints.ARMED is False  # the test run itself never crashes


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Arm `hedged:2` and record the kill instead of dying."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(_crashpoints.os, "kill", lambda pid, sig: calls.append((pid, sig)))
    monkeypatch.setattr(_crashpoints, "_passed", 0)
    return calls


def test_the_nth_passage_kills_with_sigkill(monkeypatch: pytest.MonkeyPatch, kills: list[tuple[int, int]]) -> None:
    monkeypatch.setattr(_crashpoints, "_TARGET", ("hedged", 2))
    _crashpoints.reached("after_send")
    _crashpoints.reached("hedged")
    assert kills == []
    _crashpoints.reached("hedged")
    assert [sig for _, sig in kills] == [signal.SIGKILL]


def core() -> PackageCore:
    plan = PackagePlan(
        package_id="P000001",
        client_id_prefix="lgtest000001",
        quantity=Decimal("0.05"),
        spot=LegPlan("ETH/USDT", Side.BUY, Decimal(2000), Decimal("0.0001"), Decimal("0.0001")),
        perp=LegPlan("ETH/USDT:USDT", Side.SELL, Decimal(2010), Decimal("0.001"), Decimal("0.001")),
    )
    return PackageCore(plan)


def fired(monkeypatch: pytest.MonkeyPatch, point: str, steps: list[object]) -> int:
    """Feed events through a core, calling `after_step` as the actor does; the step index that fired."""
    hits: list[int] = []
    done: list[object] = []
    monkeypatch.setattr(_crashpoints, "reached", lambda name: hits.append(len(done)) if name == point else None)
    c = core()
    for make in steps:
        event = make(c) if callable(make) else make
        commands = c.handle(event)  # type: ignore[arg-type]
        done.append(event)
        _crashpoints.after_step(c, commands)
    assert len(hits) <= 1, hits
    return hits[0] if hits else -1


def spot(c: PackageCore) -> str:
    return c.entry[LegRole.SPOT]


def perp(c: PackageCore) -> str:
    return c.entry[LegRole.PERP]


def test_step_points_fire_where_the_harness_expects(monkeypatch: pytest.MonkeyPatch) -> None:
    q = Decimal("0.05")
    opened = [
        Dispatch(),
        lambda c: OrderEvent(spot(c), OrderStatus.OPEN),
        lambda c: OrderEvent(perp(c), OrderStatus.OPEN),
    ]
    spot_filled = lambda c: OrderEvent(spot(c), OrderStatus.CLOSED, q)  # noqa: E731
    perp_filled = lambda c: OrderEvent(perp(c), OrderStatus.CLOSED, q)  # noqa: E731
    perp_rejected = lambda c: OrderEvent(perp(c), OrderStatus.REJECTED)  # noqa: E731

    assert fired(monkeypatch, "after_intent", opened) == 1  # the dispatch step journals both intents
    assert fired(monkeypatch, "one_leg_filled", [*opened, spot_filled]) == 4
    assert fired(monkeypatch, "hedged", [*opened, spot_filled, perp_filled]) == 5
    assert fired(monkeypatch, "one_leg_rejected", [*opened[:2], spot_filled, perp_rejected]) == 4
    assert fired(monkeypatch, "one_leg_rejected", [*opened, perp_rejected]) == -1  # nothing filled: void


def unwinding_core() -> PackageCore:
    """The spot leg filled, the perp rejected: the core has sent its unwind order (`-SU0`)."""
    c = core()
    c.handle(Dispatch())
    c.handle(OrderEvent(spot(c), OrderStatus.CLOSED, Decimal("0.05")))
    c.handle(OrderEvent(perp(c), OrderStatus.REJECTED))
    return c


class _Handle:
    """What `Engine.route` reads of a live package's handle."""

    def __init__(self, core: PackageCore) -> None:
        self.core = core
        self.done = trio.Event()
        self.posted: list[object] = []

    def post(self, event: object) -> None:
        self.posted.append(event)


def routed(monkeypatch: pytest.MonkeyPatch, c: PackageCore, cid: str) -> list[str]:
    """Route a stream report on `cid` through `Engine.route` with the crash points armed: the points passed."""
    hits: list[str] = []
    monkeypatch.setattr(_crashpoints, "reached", hits.append)
    monkeypatch.setattr(_engine, "CRASH_ARMED", True)
    handle = _Handle(c)
    gateway = SimpleNamespace(_orders={k: handle for k in c.orders})
    update = OrderUpdate(cid, "ETH/USDT", Side.SELL, OrderStatus.CLOSED, Decimal("0.05"), Decimal("0.05"))
    Engine.route(cast(Engine, gateway), update)
    assert [e.client_order_id for e in handle.posted] == [cid]  # type: ignore[attr-defined]  # still delivered
    return hits


def test_a_stream_report_on_an_unwind_passes_mid_unwind_before_it_is_processed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A market unwind's fill report can overtake the request's own answer; the package then goes flat and its
    # request task is cancelled, so `after_send` never runs: the harness's mid_unwind point must fire here.
    c = unwinding_core()
    unwind = next(cid for cid, facts in c.orders.items() if facts.intent.purpose is Purpose.UNWIND)
    assert routed(monkeypatch, c, unwind) == ["mid_unwind"]
    assert routed(monkeypatch, c, spot(c)) == []  # an entry leg's report passes no answer point


def test_after_send_and_the_stream_count_as_one_point(monkeypatch: pytest.MonkeyPatch) -> None:
    hits: list[str] = []
    monkeypatch.setattr(_crashpoints, "reached", hits.append)
    intent = next(f.intent for f in unwinding_core().orders.values() if f.intent.purpose is Purpose.UNWIND)
    _crashpoints.after_send(intent)
    _crashpoints.stream_answered(intent)
    assert hits == ["after_send", "mid_unwind", "mid_unwind"]  # whichever answer comes first is passage 1
