"""The actor's fill deadline through the engine's one timer task: it reaches the package only while the actor
incarnation that set it is alive (a restarted or finished actor's timers went with it, as its tasks did), and
one due after the package left `dispatched` (hedged, flat: the core ignores it there) costs no step."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import trio

from legguard.domain import OrderStatus
from legguard.engine._actor import DEADLINE_INERT, PackageActor
from legguard.engine._handle import PackageHandle
from legguard.engine._host import EngineHost, Timers
from legguard.engine._spec import EngineConfig
from legguard.engine.journal import Journal
from legguard.fsm import Dispatch, FillDeadline, OrderEvent, PackageCore, State, model_plan


def host() -> EngineHost:
    return cast(EngineHost, SimpleNamespace(config=EngineConfig(), timers=Timers(), outage=SimpleNamespace(down=False)))


async def test_a_due_fill_deadline_reaches_only_a_live_incarnation() -> None:
    handle = PackageHandle.create(PackageCore(model_plan()), 0.0)
    old, new = PackageActor(host(), handle), PackageActor(host(), handle)
    new._timers_live = True  # running (set as its nursery opens)

    old.on_timer()  # never started, or already over: nothing
    new.on_timer()
    handle.send.close()
    assert await handle.receive.receive() == FillDeadline()
    with pytest.raises(trio.EndOfChannel):  # one deadline, posted once: none from the old incarnation
        await handle.receive.receive()


def _hedged_core() -> PackageCore:
    core = PackageCore(model_plan())
    core.handle(Dispatch())
    for cid, o in list(core.orders.items()):
        core.handle(OrderEvent(cid, OrderStatus.CLOSED, filled=o.intent.amount,
                               fee_base=o.intent.amount / 1000 if "-S" in cid else Decimal(0)))  # fmt: skip
    assert core.state is State.HEDGED
    return core


def _flat_core() -> PackageCore:
    core = PackageCore(model_plan())
    core.handle(Dispatch())
    for cid in list(core.orders):
        core.handle(OrderEvent(cid, OrderStatus.CANCELED))
    assert core.state is State.FLAT
    return core


@pytest.mark.parametrize("make", [_hedged_core, _flat_core])
def test_the_core_ignores_a_fill_deadline_in_the_states_the_actor_does_not_step_it(
    make: Callable[[], PackageCore],
) -> None:
    """What lets the actor skip a late fill deadline (`DEADLINE_INERT`): the core answers nothing and changes
    nothing there."""
    core = make()
    assert core.state in DEADLINE_INERT
    before = core.fingerprint()
    assert core.handle(FillDeadline()) == []
    assert core.fingerprint() == before


async def test_a_fill_deadline_due_after_the_package_hedged_costs_no_step_and_no_journal_row(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.db")
    try:
        engine = SimpleNamespace(config=EngineConfig(), timers=Timers(), outage=SimpleNamespace(down=False),
                                 journal=journal)  # fmt: skip
        core = _hedged_core()
        handle = PackageHandle.create(core, 0.0)
        actor = PackageActor(cast(EngineHost, engine), handle)
        head = journal.head
        await actor.step(FillDeadline())
        assert journal.head == head  # nothing journaled: no transaction
        assert actor.core is core and handle.events == []
    finally:
        journal.close()


async def test_a_report_the_core_already_holds_costs_no_step_and_no_journal_row(tmp_path: Path) -> None:
    """The user stream's copy of an answer already stepped changes nothing: no step, nothing journaled; a
    report that does change something is still stepped and journaled."""
    journal = Journal.open(tmp_path / "j.db")
    try:
        committed: list[object] = []

        async def commit(writes: object, *, urgent: bool = False) -> None:
            committed.append(writes)

        engine = SimpleNamespace(config=EngineConfig(), timers=Timers(), outage=SimpleNamespace(down=False),
                                 journal=journal, group=SimpleNamespace(commit=commit),
                                 cancel_on_answer=None)  # fmt: skip
        core = PackageCore(model_plan())
        journal.package_created(core.plan, {}, 0.0)
        core.handle(Dispatch())
        spot, perp = core.orders
        core.handle(OrderEvent(spot, OrderStatus.OPEN))  # the REST acknowledgement, stepped
        handle = PackageHandle.create(core, 0.0)
        actor = PackageActor(cast(EngineHost, engine), handle)
        await actor.step(OrderEvent(spot, OrderStatus.OPEN))  # the stream's report of the same
        assert committed == [] and actor.core is core and handle.events == []
        news = OrderEvent(perp, OrderStatus.OPEN)  # the other leg's acknowledgement: news
        await actor.step(news)
        assert len(committed) == 1 and handle.events == [news] and actor.core.orders[perp].status is OrderStatus.OPEN
    finally:
        journal.close()
