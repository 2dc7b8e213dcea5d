"""`Timers`: the engine's one task for every package's fill deadline. Due owners are called in deadline order,
on virtual time; an owner that is gone (a finished actor) is dropped, never kept alive by its timer."""

from __future__ import annotations

import gc

import trio
import trio.testing

from legguard.engine._host import Timers


class Owner:
    def __init__(self, name: str, log: list[tuple[str, float]]) -> None:
        self.name = name
        self.log = log

    def on_timer(self) -> None:
        self.log.append((self.name, trio.current_time()))


async def test_owners_are_called_at_their_deadlines_in_order(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[str, float]] = []
    timers = Timers()
    owners = [Owner(n, log) for n in ("late", "early", "middle", "early-too")]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        await trio.testing.wait_all_tasks_blocked()
        assert timers.running
        start = trio.current_time()
        timers.call_at(start + 3, owners[0])
        timers.call_at(start + 1, owners[1])  # earlier than the one the task sleeps for: wakes it
        timers.call_at(start + 2, owners[2])
        timers.call_at(start + 1, owners[3])
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert timers.running is False
    assert [(name, at - start) for name, at in log] == [("early", 1), ("early-too", 1), ("middle", 2), ("late", 3)]


async def test_an_owner_that_is_gone_is_dropped_not_kept_alive(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[str, float]] = []
    timers = Timers()
    kept = Owner("kept", log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        await trio.testing.wait_all_tasks_blocked()
        timers.call_at(trio.current_time() + 1, Owner("gone", log))  # nothing else holds it
        timers.call_at(trio.current_time() + 1, kept)
        gc.collect()
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert [name for name, _ in log] == ["kept"]
