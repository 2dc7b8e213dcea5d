"""The package handle's own primitives: the mailbox (what trio's memory channel did for it, in far less memory)
and the `done` flag (a trio event made only when someone waits)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from legguard.engine._handle import Done, Mailbox
from legguard.fsm import Dispatch, FillDeadline, Shutdown


async def test_the_mailbox_hands_events_over_in_order_whether_or_not_the_receiver_waits() -> None:
    box = Mailbox()
    box.send_nowait(Dispatch())
    box.send_nowait(FillDeadline())
    assert await box.receive() == Dispatch()
    assert await box.receive() == FillDeadline()
    got: list[object] = []

    async def receiver() -> None:
        got.append(await box.receive())
        got.append(await box.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        box.send_nowait(Shutdown())  # straight to the waiting receiver
        box.send_nowait(Dispatch())  # queued: the receiver has not run yet
    assert got == [Shutdown(), Dispatch()]


async def test_a_receive_is_a_checkpoint_even_with_an_event_waiting() -> None:
    box = Mailbox()
    box.send_nowait(Dispatch())
    with trio.CancelScope() as scope:
        scope.cancel()
        await box.receive()
    assert scope.cancelled_caught
    assert await box.receive() == Dispatch()  # a cancelled receive took nothing


async def test_a_receiver_cancelled_while_waiting_leaves_the_mailbox_usable(autojump_clock: object) -> None:
    box = Mailbox()
    with trio.move_on_after(1):
        await box.receive()
    box.send_nowait(FillDeadline())  # not handed to the cancelled receiver
    assert await box.receive() == FillDeadline()


async def test_a_closed_mailbox_refuses_posts_and_ends_its_receiver() -> None:
    box = Mailbox()
    box.send_nowait(Dispatch())
    box.close()
    with pytest.raises(trio.ClosedResourceError):
        box.send_nowait(Shutdown())
    assert await box.receive() == Dispatch()  # what was posted before the close is still delivered
    with pytest.raises(trio.EndOfChannel):
        await box.receive()

    waiting = Mailbox()
    ended: list[bool] = []

    async def receiver() -> None:
        with pytest.raises(trio.EndOfChannel):
            await waiting.receive()
        ended.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        waiting.close()
    assert ended == [True]


async def test_done_answers_is_set_and_wakes_waiters_before_and_after_it_is_set() -> None:
    done = Done()
    assert not done.is_set()
    woke: list[int] = []

    async def waiter(n: int) -> None:
        await done.wait()
        woke.append(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        done.set()
    assert done.is_set() and woke == [1]
    await done.wait()  # already set: returns at once

    late = Done()
    late.set()
    await late.wait()  # set before anyone waited: the event made on the first wait starts set
    assert late.is_set()
