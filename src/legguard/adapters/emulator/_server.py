"""`serve_emulator`: an `Emulator` with its REST and websocket routes, listening on loopback for the duration
of a block. The one module that knows all three parts of the room (state, REST, websockets).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from legguard.adapters.market import GeneratorConfig, MatchingEngine

from ._emulator import DEFAULT_API_KEY, DEFAULT_API_SECRET, DEFAULT_HOST, Emulator
from ._rest import make_app


@asynccontextmanager
async def serve_emulator(
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    tls_port: int | None = 0,
    seed: int = 0,
    api_key: str = DEFAULT_API_KEY,
    api_secret: str = DEFAULT_API_SECRET,
    autoclock: bool = True,
    tick_seconds: float = 1.0,
    engine: MatchingEngine | None = None,
    market: GeneratorConfig | None = None,
) -> AsyncIterator[Emulator]:
    """Run an emulator on an asyncio loop for the duration of the block (port 0: any free port)."""
    emulator = Emulator(
        seed=seed,
        api_key=api_key,
        api_secret=api_secret,
        engine=engine,
        autoclock=autoclock,
        tick_seconds=tick_seconds,
        market=market,
    )
    await emulator.start(make_app(emulator), host, port, tls_port)
    try:
        yield emulator
    finally:
        await emulator.aclose()
