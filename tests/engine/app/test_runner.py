"""`run_engine`'s start-up heap: frozen out of the cyclic collector's sight while the engine trades (a full
collection over ccxt's classes and the engine is a pause of a tenth of a second), handed back when the run ends."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import trio
from trio.testing import MockClock

from legguard.engine.app._config import parse_config
from legguard.engine.app._runner import RunStatus, run_engine

CONFIG: dict[str, Any] = {
    "venue": {"kind": "sim", "seed": 7},
    "pairs": [{"spot": "ETH/USDT", "perp": "ETH/USDT:USDT", "quantity": "0.05"}],
}


async def test_the_start_up_heap_is_frozen_while_trading_and_released_after(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    assert gc.get_freeze_count() == 0
    status = RunStatus()
    frozen: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_engine, parse_config(CONFIG), tmp_path / "j.db", None, status)
        await status.ready.wait()
        frozen.append(gc.get_freeze_count())
        engine = status.engine
        assert engine is not None
        assert any(o is engine for o in gc.get_objects()) is False  # frozen objects leave the collector's view
        await trio.sleep(5.0)
        status.stop.set()
    assert frozen[0] > 10_000  # every module loaded, the engine, the venue: everything start-up built
    assert gc.get_freeze_count() == 0
