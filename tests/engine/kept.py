"""Tests read a package's handle after it finished; the engine releases a flat package's handle from memory
(`Engine._release`, `_retired.py`). `keep_handles` registers an observer that keeps every handle the engine
reported a transition for, so a scenario can still look at a finished package's core and timing facts."""

from __future__ import annotations

from legguard.engine import Engine
from legguard.engine._handle import PackageHandle
from legguard.engine._observe import EngineObserver
from legguard.fsm import Transitioned


class _Keeper(EngineObserver):
    def __init__(self) -> None:
        self.handles: dict[str, PackageHandle] = {}

    def on_transition(self, handle: PackageHandle, t: Transitioned, now: float) -> None:
        self.handles[handle.package_id] = handle


def keep_handles(engine: Engine) -> dict[str, PackageHandle]:
    """Every package handle of `engine` from its first transition on (package id -> handle), kept after the
    engine released it. A package whose actor never stepped is not in it yet: take it from `engine.handles`."""
    keeper = _Keeper()
    engine.observers.append(keeper)
    return keeper.handles
