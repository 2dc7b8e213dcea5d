"""The actor's fill deadline through the engine's one timer task: it reaches the package only while the actor
incarnation that set it is alive (a restarted or finished actor's timers went with it, as its tasks did)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest
import trio

from legguard.engine._actor import PackageActor
from legguard.engine._handle import PackageHandle
from legguard.engine._host import EngineHost, Timers
from legguard.engine._spec import EngineConfig
from legguard.fsm import FillDeadline, PackageCore, model_plan


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
