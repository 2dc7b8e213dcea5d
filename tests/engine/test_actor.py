"""The package actor's kill-switch path on the simulated venue, in virtual time: the unwind armed while the
cancel travels is released as armed when the cancel's answer confirms what was known, and armed again when
the answer changes it; and urgent events (order events of a package in the kill switch) go before routine
work, its own mailbox's and other packages'."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from legguard.adapters._venue import ArmedOrder
from legguard.adapters.sim._venue import SimConfig, SimVenue, open_sim_venue
from legguard.domain import BookSnapshot, OrderRequest, OrderStatus, OrderUpdate, RejectReason, Side
from legguard.engine import Deadlines, Engine, EngineConfig, PackageSpec
from legguard.engine._actor import PackageActor, _Prepared
from legguard.engine._group import GroupCommitFailed
from legguard.engine._handle import PRECEDENCE_WAIT, PackageHandle, Precedence
from legguard.engine._venue_truth import compare_venue
from legguard.engine.journal._store import Journal
from legguard.fsm import Dispatch, Event, FillDeadline, LegRole, OrderEvent, PackageCore, State, model_plan

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
QTY = Decimal("0.05")
DEADLINES = Deadlines(ack=1.0, fill=30.0, unwind=30.0, leg=30.0, recv_window=2.0, clock_allowance=0.5)


@dataclass
class Rig:
    venue: SimVenue
    journal: Journal
    engine: Engine
    armed: list[ArmedOrder] = field(default_factory=list)  # every order armed, in order
    fired: dict[str, ArmedOrder] = field(default_factory=dict)  # client id -> the armed order sent
    cancel_held: trio.Event = field(default_factory=trio.Event)  # a cancel reached the venue's door
    cancel_go: trio.Event = field(default_factory=trio.Event)  # let the held cancels through
    books_held: bool = False  # book watchers wait for `books_go`, then get the book at once
    books_go: trio.Event = field(default_factory=trio.Event)

    async def books_paused(self) -> None:
        """Hold the book watchers at the venue until `books_release` (both are waiting once this returns)."""
        self.books_held = True
        await trio.sleep(1.0)  # the watchers come back from the sim venue's next book change and wait

    def books_release(self) -> None:
        self.books_go.set()
        self.books_go = trio.Event()

    def armed_for(self, suffix: str) -> list[ArmedOrder]:
        return [a for a in self.armed if a.request.client_order_id.endswith(suffix)]

    def fill_spot_entry(self, handle: PackageHandle, quantity: Decimal) -> None:
        """The wider market sells `quantity` into the package's resting spot buy; the stream reports it."""
        price = handle.core.orders[handle.core.entry[LegRole.SPOT]].intent.price
        assert price is not None
        self.venue.engine.trade_through(ETH, Side.SELL, price, quantity, trio.current_time())
        self.venue._publish(self.venue.engine.drain_updates())


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    journal = Journal.open(tmp_path / "journal.db")
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES))
        r = Rig(venue, journal, engine)
        real_arm, real_fire, real_cancel = venue.arm, venue.fire, venue.cancel_order
        real_watch = venue.watch_order_book

        def arm(request: OrderRequest) -> ArmedOrder:
            armed = real_arm(request)
            r.armed.append(armed)
            return armed

        async def fire(armed: ArmedOrder) -> OrderUpdate:
            r.fired[armed.request.client_order_id] = armed
            return await real_fire(armed)

        async def cancel_order(symbol: str, client_order_id: str) -> OrderUpdate:
            r.cancel_held.set()
            await r.cancel_go.wait()
            return await real_cancel(symbol, client_order_id)

        async def watch_order_book(symbol: str) -> BookSnapshot:
            if not r.books_held:
                return await real_watch(symbol)
            await r.books_go.wait()
            return venue.engine.book(symbol)

        venue.watch_order_book = watch_order_book  # type: ignore[method-assign]
        venue.arm = arm  # type: ignore[method-assign]
        venue.fire = fire  # type: ignore[method-assign]
        venue.cancel_order = cancel_order  # type: ignore[method-assign]
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)  # let the books fill
            yield r
    truth = compare_venue(venue.engine, journal)
    journal.close()
    assert truth.ok, truth.problems


async def kill_switch_waiting_on_its_cancel(rig: Rig, filled: Decimal, cap: Decimal | None = None) -> PackageHandle:
    """A package whose perp leg is rejected and whose spot leg rests with `filled` filled (and can fill no more
    than `cap`, default `filled`, whatever the simulated market does): the kill switch has sent the spot's
    cancel, which the venue holds until `rig.cancel_go`."""
    rig.venue.inject("partial_fill", symbol=ETH, fraction=float((cap or filled) / QTY))
    rig.venue.inject("reject", symbol=ETH_PERP, reason=RejectReason.POST_ONLY_CROSS)
    pid = rig.engine.submit(PackageSpec(ETH, ETH_PERP, QTY, min_spread=Decimal(-1)))
    handle = rig.engine.handles[pid]
    with trio.fail_after(10):
        await rig.cancel_held.wait()  # the rejection decided: the resting spot is being cancelled
        rig.fill_spot_entry(handle, filled)
        await handle.wait_until(lambda core: core.state is State.UNWINDING and core.exposure().spot > 0)
    return handle


def held_after_fees(core: PackageCore, spot_cid: str) -> Decimal:
    o = core.orders[spot_cid]
    step = core.plan.spot.step
    return ((o.filled - o.fee_base) / step).to_integral_value(rounding=ROUND_DOWN) * step


async def test_the_unwind_armed_while_the_cancel_travels_is_released_as_armed(
    autojump_clock: MockClock, rig: Rig
) -> None:
    handle = await kill_switch_waiting_on_its_cancel(rig, Decimal("0.02"))
    spot = handle.core.entry[LegRole.SPOT]
    armed = rig.armed_for("-SU0")
    assert len(armed) == 1  # armed while the cancel is still held at the venue
    assert armed[0].request.amount == held_after_fees(handle.core, spot) > 0
    assert rig.fired.get(armed[0].request.client_order_id) is None  # armed, never sent by itself

    rig.cancel_go.set()
    with trio.fail_after(10):
        await handle.wait_until(lambda core: core.state is State.FLAT)

    assert rig.armed_for("-SU0") == armed  # nothing built or signed again
    assert rig.fired[armed[0].request.client_order_id] is armed[0]
    assert (rig.engine.stats.armed_ahead, rig.engine.stats.rearmed) == (1, 0)
    assert rig.engine.stats.prepared_steps == 1  # the cancel's answer was expected: its step was ready


async def test_an_answer_that_changes_the_fill_arms_the_unwind_again(autojump_clock: MockClock, rig: Rig) -> None:
    handle = await kill_switch_waiting_on_its_cancel(rig, Decimal("0.02"), cap=Decimal("0.03"))
    first = rig.armed_for("-SU0")
    assert len(first) == 1 and first[0].request.amount > 0
    # The spot fills further while the cancel travels, and the stream runs late: the cancel's answer is the
    # first to tell (Binance reports the cumulative fill in it).
    rig.venue.inject("stream_lag", seconds=0.5, duration=5.0)
    rig.fill_spot_entry(handle, Decimal("0.01"))

    rig.cancel_go.set()
    with trio.fail_after(10):
        await handle.wait_until(lambda core: core.state is State.FLAT)

    spot = handle.core.entry[LegRole.SPOT]
    assert handle.core.orders[spot].filled == Decimal("0.03")
    armed = rig.armed_for("-SU0")
    assert [a.request.amount for a in armed] == [first[0].request.amount, held_after_fees(handle.core, spot)]
    assert rig.fired[armed[-1].request.client_order_id] is armed[-1]  # the one armed for what the answer said
    assert (rig.engine.stats.armed_ahead, rig.engine.stats.rearmed) == (0, 1)
    assert rig.engine.stats.prepared_steps == 0  # an answer other than the one expected: decided as usual


async def test_a_step_taken_as_prepared_is_the_step_the_core_would_take_rows_included(
    autojump_clock: MockClock, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whenever the actor takes a prepared step, deciding the same event on the same core now gives the same
    commands, the same core after it and the same journal rows."""
    real_ready = _Prepared.ready_for
    taken: list[OrderEvent] = []

    def ready_for(self: _Prepared, core: PackageCore, event: OrderEvent) -> bool:
        ready = real_ready(self, core, event)
        if ready:
            twin = core.clone()
            commands = twin.handle(event)
            assert commands == list(self.commands)
            assert twin.fingerprint() == self.twin.fingerprint()
            pid = core.plan.package_id
            assert rig.journal.encode_step(pid, event, commands, twin.state, twin.exposure()) == self.encoded
            taken.append(event)
        return ready

    monkeypatch.setattr(_Prepared, "ready_for", ready_for)
    handle = await kill_switch_waiting_on_its_cancel(rig, Decimal("0.02"))
    rig.cancel_go.set()
    with trio.fail_after(10):
        await handle.wait_until(lambda core: core.state is State.FLAT)
    assert [e.status for e in taken] == [OrderStatus.CANCELED]


async def test_a_prepared_step_sends_nothing_before_its_rows_are_committed(
    autojump_clock: MockClock, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Write-ahead holds for a step taken as prepared: its commit fails once, and the unwind it decided is not
    sent; the next incarnation of the actor decides again, commits, and only then sends it."""
    real_step, real_commit, real_fire = PackageActor._step, rig.engine.group.commit, rig.venue.fire
    stepping: list[Event] = []
    failed: list[int] = []

    async def step(self: PackageActor, event: Event) -> None:
        stepping.append(event)
        await real_step(self, event)

    async def commit(writes: object, *, urgent: bool = False) -> None:
        event = stepping[-1]
        if not failed and isinstance(event, OrderEvent) and event.status is OrderStatus.CANCELED:
            failed.append(rig.engine.stats.prepared_steps)
            raise GroupCommitFailed("injected: the disk is full")
        await real_commit(writes, urgent=urgent)  # type: ignore[arg-type]

    async def fire(armed: ArmedOrder) -> OrderUpdate:
        cid = armed.request.client_order_id
        pid = cid.rsplit("-", 1)[0]
        package = next(h for h in rig.engine.handles.values() if h.core.plan.client_id_prefix == pid)
        assert cid in {i.client_order_id for i in rig.journal.intents(package.package_id)}, cid
        return await real_fire(armed)

    monkeypatch.setattr(PackageActor, "_step", step)
    monkeypatch.setattr(rig.engine.group, "commit", commit)
    monkeypatch.setattr(rig.venue, "fire", fire)
    handle = await kill_switch_waiting_on_its_cancel(rig, Decimal("0.02"))
    rig.cancel_go.set()
    with trio.fail_after(10):
        await handle.wait_until(lambda core: core.state is State.FLAT)
    assert failed == [1]  # the failed commit was of a step taken as prepared
    assert [cid for cid in rig.fired if cid.endswith("-SU0")]  # sent at last, after its commit


# --- precedence: the kill switch's events first -----------------------------------------------------------


async def test_routine_work_defers_to_pending_urgent_events_but_never_longer_than_the_bound(
    autojump_clock: MockClock,
) -> None:
    precedence = Precedence()
    await precedence.defer()  # nothing urgent: returns at once
    assert trio.current_time() == 0

    precedence.add()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(precedence.defer)
        await trio.sleep(0.001)
        precedence.done()  # the urgent event was taken: the routine work goes on now
    assert trio.current_time() == pytest.approx(0.001)

    precedence.add()  # never taken (a stuck actor): routine work waits the bound, then goes on
    start = trio.current_time()
    await precedence.defer()
    assert trio.current_time() - start == pytest.approx(PRECEDENCE_WAIT)


def unwinding_core() -> PackageCore:
    from legguard.fsm import LegPlan, PackagePlan

    plan = PackagePlan(
        "t", "lg-t", Decimal("0.002"),
        LegPlan("BTC/USDT", Side.BUY, Decimal("60000"), Decimal("0.00001"), Decimal("0.00001")),
        LegPlan("BTC/USDT:USDT", Side.SELL, Decimal("60012"), Decimal("0.001"), Decimal("0.001")),
    )  # fmt: skip
    core = PackageCore(plan)
    for event in (Dispatch(), OrderEvent("lg-t-SE0", OrderStatus.OPEN, Decimal("0.001")),
                  OrderEvent("lg-t-PE0", OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS)):  # fmt: skip
        core.handle(event)
    assert core.state is State.UNWINDING
    return core


async def test_an_unwinding_package_takes_its_order_events_before_routine_ones_queued_earlier() -> None:
    handle = PackageHandle.create(unwinding_core(), 0.0, Precedence())
    actor = PackageActor(SimpleNamespace(precedence=handle.precedence), handle)  # type: ignore[arg-type]
    answer = OrderEvent("lg-t-SE0", OrderStatus.CANCELED, Decimal("0.001"))

    handle.post(FillDeadline())  # routine: the channel
    handle.post(answer)  # the cancel's answer: the urgent lane
    assert handle.precedence is not None and handle.precedence.pending == 1

    first, second = await actor._next_event(), await actor._next_event()

    assert (first, second) == (answer, FillDeadline())
    assert handle.precedence.pending == 0


async def test_a_kill_switch_event_is_stepped_before_book_updates_and_other_packages_routine_events(
    autojump_clock: MockClock, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = rig.engine.handles[rig.engine.submit(PackageSpec(ETH, ETH_PERP, QTY, min_spread=Decimal(-1)))]
    with trio.fail_after(30):
        await other.wait_until(lambda core: core.state is State.HEDGED and core.is_quiescent())
    unwinding = await kill_switch_waiting_on_its_cancel(rig, Decimal("0.02"))
    assert unwinding.is_urgent() and not other.is_urgent()

    order: list[str] = []
    routine = {other.package_id, f"book {ETH}", f"book {ETH_PERP}"}
    all_done = [trio.Event()]  # set once the routine work of the round has happened

    def note(what: str) -> None:
        order.append(what)
        if routine <= set(order):
            all_done[0].set()

    real_step = PackageActor.step

    async def step(self: PackageActor, event: Event) -> None:
        note(self.handle.package_id)
        await real_step(self, event)

    monkeypatch.setattr(PackageActor, "step", step)

    class Books(dict):  # type: ignore[type-arg]
        def __setitem__(self, symbol: str, book: object) -> None:
            note(f"book {symbol}")
            super().__setitem__(symbol, book)

    rig.engine.books = Books(rig.engine.books)
    spot = unwinding.core.orders[unwinding.core.entry[LegRole.SPOT]]
    # Trio runs the tasks woken together in either order: several rounds, so that luck alone cannot pass.
    for _ in range(8):
        await rig.books_paused()
        order.clear()
        all_done[0] = trio.Event()
        # At one instant: the unwinding package's order event (the stream repeats what it knows), a routine
        # event of a hedged package (a no-op there) and a book update of each market.
        unwinding.post(OrderEvent(spot.intent.client_order_id, OrderStatus.OPEN, spot.filled, spot.average,
                                  spot.fee_base, spot.fee_quote))  # fmt: skip
        other.post(FillDeadline())
        rig.books_release()
        with trio.fail_after(10):
            await all_done[0].wait()
        assert order[0] == unwinding.package_id, order  # before any of the routine work
    assert rig.engine.precedence.pending == 0
    rig.cancel_go.set()
    with trio.fail_after(10):
        await unwinding.wait_until(lambda core: core.state is State.FLAT)
    assert other.core.state is State.HEDGED


async def test_the_cancels_answer_is_stepped_by_the_task_that_read_it(
    autojump_clock: MockClock, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = await kill_switch_waiting_on_its_cancel(rig, Decimal("0.02"))
    stepped_by: list[tuple[str, object, str]] = []
    real_step = PackageActor.step

    async def step(self: PackageActor, event: Event) -> None:
        stepped_by.append((event.kind, getattr(event, "status", ""), trio.lowlevel.current_task().name))
        await real_step(self, event)

    monkeypatch.setattr(PackageActor, "step", step)

    rig.cancel_go.set()
    with trio.fail_after(10):
        await handle.wait_until(lambda core: core.state is State.FLAT)

    # No hop through the mailbox between the answer and the step that sends the unwind.
    answer = next(s for s in stepped_by if s[1] is OrderStatus.CANCELED)
    assert answer[2].endswith("PackageActor._cancel"), stepped_by


class GatedGroup:
    """A group commit that holds every commit until the test opens the gate, and records how many steps were
    inside a commit at once."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.inside = 0
        self.most_inside = 0

    async def commit(self, writes: object, *, urgent: bool = False) -> None:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            with trio.CancelScope(shield=True):  # as the real group commit: its wait cannot be cancelled
                await self.gate.wait()
        finally:
            self.inside -= 1


async def test_two_tasks_stepping_one_package_take_turns_while_a_group_commits() -> None:
    # The task that read a venue answer steps the package itself (`_answered`); the actor's own task steps
    # mailbox events. A step yields while its group commits: a second step deciding on the same core then
    # would be lost when the first replaces the core. The second waits for the first.
    group = GatedGroup()
    journal = SimpleNamespace(prepare_fact=lambda *a: None, prepare_step=lambda *a: None)
    host = SimpleNamespace(
        config=EngineConfig(), journal=journal, group=group, precedence=Precedence(), cancel_on_answer=None
    )
    handle = PackageHandle.create(PackageCore(model_plan()), 0.0)
    actor = PackageActor(host, handle)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        actor._nursery = nursery
        nursery.start_soon(actor.step, FillDeadline())
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(actor.step, FillDeadline())
        await trio.testing.wait_all_tasks_blocked()
        assert group.inside == 1  # the second step waits outside, before deciding anything
        group.gate.set()
    assert group.most_inside == 1
    assert handle.events == [FillDeadline(), FillDeadline()]


async def test_a_step_waiting_for_another_is_not_lost_to_a_cancellation() -> None:
    # The actor's loop took an event from the mailbox and waits for a step in progress: a shutdown that cancels
    # it there must not drop the event (it is stepped, then the cancellation lands at the next checkpoint).
    group = GatedGroup()
    journal = SimpleNamespace(prepare_fact=lambda *a: None, prepare_step=lambda *a: None)
    host = SimpleNamespace(
        config=EngineConfig(), journal=journal, group=group, precedence=Precedence(), cancel_on_answer=None
    )
    handle = PackageHandle.create(PackageCore(model_plan()), 0.0)
    actor = PackageActor(host, handle)  # type: ignore[arg-type]

    async def cancelled_while_waiting() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await actor.step(FillDeadline())

    async with trio.open_nursery() as nursery:
        actor._nursery = nursery
        nursery.start_soon(actor.step, FillDeadline())
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(cancelled_while_waiting)
        await trio.testing.wait_all_tasks_blocked()
        group.gate.set()
    assert handle.events == [FillDeadline(), FillDeadline()]


class FailingGatedGroup(GatedGroup):
    async def commit(self, writes: object, *, urgent: bool = False) -> None:
        await super().commit(writes, urgent=urgent)
        raise GroupCommitFailed("injected")


@pytest.mark.parametrize("commit_fails", [False, True])
async def test_a_rejection_read_during_a_step_is_stepped_next_by_that_steps_task(
    monkeypatch: pytest.MonkeyPatch, commit_fails: bool
) -> None:
    # The other leg's answer is being stepped (its group commits) when a leg's rejection is read: the rejection
    # is not queued for the actor's loop (a hop) but stepped by the task of the step in progress as soon as it
    # is done; if that step fails, the rejection queues in the mailbox as any event.
    group = FailingGatedGroup() if commit_fails else GatedGroup()
    journal = SimpleNamespace(prepare_fact=lambda *a: None, prepare_step=lambda *a: None)
    host = SimpleNamespace(
        config=EngineConfig(), journal=journal, group=group, precedence=Precedence(), cancel_on_answer=None
    )
    handle = PackageHandle.create(PackageCore(model_plan()), 0.0)
    actor = PackageActor(host, handle)  # type: ignore[arg-type]
    posted: list[Event] = []
    monkeypatch.setattr(PackageHandle, "post", lambda self, event: posted.append(event))
    stepped: list[tuple[str, str]] = []

    async def step(self: PackageActor, event: Event) -> None:  # what a step does around its commit, no more
        stepped.append((event.kind, trio.lowlevel.current_task().name))
        await group.commit([])

    monkeypatch.setattr(PackageActor, "_step", step)
    rejection = OrderEvent("lg-x-PE0", OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS)

    async def in_progress() -> None:
        with contextlib.suppress(GroupCommitFailed):
            await actor.step(FillDeadline())

    async with trio.open_nursery() as nursery:
        actor._nursery = nursery
        nursery.start_soon(in_progress, name="first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(actor._answered, rejection, name="reader")
        await trio.testing.wait_all_tasks_blocked()
        held = (list(stepped), list(posted))
        group.gate.set()
    assert held == ([(FillDeadline().kind, "first")], [])  # held for the step in progress
    if commit_fails:
        assert posted == [rejection] and len(stepped) == 1
    else:
        assert stepped[1] == ("order", "first") and rejection not in posted


async def test_a_legs_rejection_commits_at_once_without_waiting_for_its_round(
    autojump_clock: MockClock, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rejection's step does not lead a group (a scheduler pass of waiting): the other leg's answer, which
    # decides the kill switch, would otherwise wait for it. Acknowledgements still share their round.
    commits: list[tuple[str, object, bool]] = []
    real_step, real_commit = PackageActor._step, rig.engine.group.commit
    stepping: list[Event] = []

    async def step(self: PackageActor, event: Event) -> None:
        stepping.append(event)
        await real_step(self, event)

    async def commit(writes: object, *, urgent: bool = False) -> None:
        event = stepping[-1]
        commits.append((event.kind, getattr(event, "status", None), urgent))
        await real_commit(writes, urgent=urgent)  # type: ignore[arg-type]

    monkeypatch.setattr(PackageActor, "_step", step)
    monkeypatch.setattr(rig.engine.group, "commit", commit)
    rig.venue.inject("reject", symbol=ETH_PERP, reason=RejectReason.POST_ONLY_CROSS)
    pid = rig.engine.submit(PackageSpec(ETH, ETH_PERP, QTY, min_spread=Decimal(-1)))
    rig.cancel_go.set()
    with trio.fail_after(10):
        await rig.engine.handles[pid].wait_until(lambda core: core.state is State.FLAT)

    answers = [(status, urgent) for kind, status, urgent in commits if kind == "order"]
    assert (OrderStatus.REJECTED, True) in answers, commits
    # The other leg's acknowledgement still shares its round (the dispatch is committed by `submit` itself).
    assert ("order", OrderStatus.OPEN, False) in commits, commits


async def test_the_kill_switchs_steps_leave_their_audited_facts_to_a_later_transaction(
    autojump_clock: MockClock, rig: Rig
) -> None:
    # The rejection's step is urgent: its `order_error` fact is journaled after the step's own rows (with
    # the package's next routine step, or at the actor's end), not encoded and inserted ahead of them on the
    # kill switch's path. Nothing is lost: every fact is in the journal once the package is flat.
    rig.venue.inject("reject", symbol=ETH_PERP, reason=RejectReason.POST_ONLY_CROSS)
    pid = rig.engine.submit(PackageSpec(ETH, ETH_PERP, QTY, min_spread=Decimal(-1)))
    handle = rig.engine.handles[pid]
    rig.cancel_go.set()
    with trio.fail_after(10):
        await handle.done.wait()

    rows = rig.journal.timeline(pid)
    perp = f"{handle.core.plan.client_id_prefix}-PE0"
    (rejected,) = [
        r for r in rows
        if r.kind == "event" and r.payload.get("client_order_id") == perp and r.payload.get("status") == "rejected"
    ]  # fmt: skip
    (error,) = [r for r in rows if r.kind == "order_error" and r.payload["client_order_id"] == perp]
    assert error.seq > rejected.seq
    acks = [r.payload["client_order_id"] for r in rows if r.kind == "ack"]
    assert acks and len(acks) == len(set(acks))  # each answer journaled once
    # An answer's payload is made when it is journaled (the venue's update is kept until then), whole.
    fields = {"client_order_id", "venue_order_id", "status", "filled", "average"}
    assert all(set(r.payload) == fields for r in rows if r.kind == "ack")
    assert handle.facts == []
