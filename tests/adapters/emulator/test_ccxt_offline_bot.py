"""The done-when check of issue 17: `examples/ccxt_offline_bot.py` (plain ccxt / ccxt.pro, no legguard import)
makes the issue's 28 calls and the ones it adds against the emulator, in-process, and every one works."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

from legguard.adapters.emulator._server import serve_emulator

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "ccxt_offline_bot.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ccxt_offline_bot", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_imports_nothing_of_legguard() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(name.startswith("legguard") for name in imported)


def test_a_plain_ccxt_bot_makes_every_call_without_an_error() -> None:
    bot = _load()

    async def main() -> list[tuple[str, bool, str]]:
        # Real time (ccxt.pro waits for stream messages); a fast market so prints come quickly.
        async with serve_emulator(seed=3, autoclock=True, tick_seconds=0.2) as emu:
            results: list[tuple[str, bool, str]] = await asyncio.wait_for(bot.main(f"http://127.0.0.1:{emu.port}"), 60)
            return results

    results = asyncio.run(main())
    failed = [(name, detail) for name, ok, detail in results if not ok]
    assert failed == []
    assert len(results) >= bot.ISSUE_CALLS + 15
    names = [name for name, _, _ in results[: bot.ISSUE_CALLS]]
    for call in ("fetch_ticker spot", "fetch_mark_ohlcv perp", "transfer spot->futures", "watch_trades spot"):
        assert call in names
