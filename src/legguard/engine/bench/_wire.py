"""`legguard bench`, the wire half: inter-leg skew and kill-switch reaction measured at the client's sockets,
for packages sent through `CcxtVenue` to the Binance-wire emulator running in a separate process on loopback.

Skew is the time between the two legs' request bytes being handed to the kernel. For plain ccxt (sequential
awaits, naive `asyncio.gather`) that moment is asyncio's transport `write` (aiohttp 3.14 fires its
`on_request_headers_sent` trace before the headers are even serialised: they are buffered and written with
the body), so the bench wraps the transport's `write` for the duration of those runs; legguard's order path
reports the same moment through `CcxtVenue.set_tap`. The emulator is a separate process so that its work
never runs between the client's two writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from legguard.adapters.ccxt._venue import EXCHANGE_IDS, CcxtVenue, CcxtVenueConfig, open_ccxt_venue
from legguard.adapters.emulator._emulator import DEFAULT_API_KEY, DEFAULT_API_SECRET
from legguard.engine._engine import Engine
from legguard.engine._spec import BreakerConfig, Deadlines, EngineConfig, PackageSpec
from legguard.engine.journal import Durability, Journal
from legguard.fsm import PackageCore, State

SPOT, PERP = "ETH/USDT", "ETH/USDT:USDT"
WARM_INTERVAL = 0.001  # `engine.keep_warm` for the side-by-side measures with the decision path kept warm
QTY = Decimal("0.01")
MODES = ("sequential", "gather", "legguard")


# --- the emulator in its own process ------------------------------------------------------------------


def _serve() -> None:  # pragma: no cover - runs in the child process
    """Child process: serve the emulator on a free loopback port (market frozen: one move an hour), print
    {"port": ...} and serve until stdin closes."""
    from legguard.adapters.emulator._server import serve_emulator
    from legguard.domain import MarketKind

    async def main() -> None:
        async with serve_emulator(port=0, tls_port=None, seed=5, autoclock=True, tick_seconds=3600.0) as emu:
            # The bench sends thousands of orders a minute; Binance's per-minute weights would refuse them.
            emu.WEIGHT_LIMITS = {MarketKind.SPOT: 10**9, MarketKind.LINEAR: 10**9}
            print(json.dumps({"port": emu.port}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


@contextlib.contextmanager
def emulator_process() -> Iterator[str]:
    """Start the emulator in a child process; yields its base URL, stops it on exit."""
    child = subprocess.Popen(
        [sys.executable, "-m", __name__],  # this module's own name: it serves the emulator under __main__
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    before = set(cpus)
    if len(cpus) >= 2:
        # Client and emulator on different cores: a request's wake-up of the emulator must not preempt the
        # client between its two writes.
        os.sched_setaffinity(child.pid, {cpus[-1]})
        os.sched_setaffinity(0, set(cpus[:-1]))
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise RuntimeError("the bench emulator process did not start")
        yield f"http://127.0.0.1:{json.loads(line)['port']}"
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        if len(before) >= 2:
            os.sched_setaffinity(0, before)  # the caller gets its cores back


def _control(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read().decode())


# --- socket-level time stamps ---------------------------------------------------------------------------


@dataclass(slots=True)
class Stamps:
    """Every order-path send/answer time (perf_counter_ns) by key: client order id, or `cancel:<id>`."""

    sends: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    writes: list[int] = field(default_factory=list)  # asyncio transport writes (plain ccxt runs)

    def tap(self, what: str, key: str, ns: int) -> None:
        if what == "send":
            self.sends.setdefault(key, ns)
        else:
            self.answers.setdefault(key, ns)


@contextlib.contextmanager
def transport_writes(stamps: Stamps) -> Iterator[None]:
    """Stamp every asyncio socket-transport write (aiohttp's requests) while the block runs."""
    from asyncio import selector_events

    cls: Any = getattr(selector_events, "_SelectorSocketTransport")  # noqa: B009 - private in typeshed
    original = cls.write

    def write(self: Any, data: Any) -> None:
        original(self, data)
        # Only new-order requests: websocket frames and listenKey calls of the streams are not legs.
        line = bytes(data[:160]).split(b"\r\n", 1)[0]
        if line.startswith(b"POST ") and b"/order " in line:
            stamps.writes.append(time.perf_counter_ns())

    cls.write = write
    try:
        yield
    finally:
        cls.write = original


# --- the rig ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class WireRig:
    base: str
    venue: CcxtVenue
    engine: Engine
    stamps: Stamps
    seq: int = 0

    def cid(self, tag: str) -> str:
        self.seq += 1
        return f"bench{tag}{os.getpid() % 10000}x{self.seq}"


@contextlib.asynccontextmanager
async def wire_rig(
    base: str, journal_dir: Path, *, keep_warm: float | None = EngineConfig().keep_warm, name: str = "wire"
) -> AsyncIterator[WireRig]:
    """The engine on `CcxtVenue` against the emulator at `base`; `keep_warm` as `EngineConfig`'s (the default
    by default), journal `<name>.db` in `journal_dir`."""
    urls = await trio.to_thread.run_sync(_control, base, "/_emulator/ccxt-urls")
    config = CcxtVenueConfig(
        api_key=DEFAULT_API_KEY,
        secret=DEFAULT_API_SECRET,
        urls={e: (urls[e].get("urls", {}).get("api", urls[e]) if "urls" in urls[e] else urls[e]) for e in EXCHANGE_IDS},
        name="emulator",
        budget_burst=1e12,  # the bench outpaces Binance's budget on purpose; the emulator's limits are off too
        budget_reserve=1.0,
        stream_ready_timeout=0,
        close_grace=0,
    )
    engine_config = dataclasses.replace(
        EngineConfig(),
        deadlines=Deadlines(ack=5.0, fill=0.02, unwind=10.0),  # entries rest on a frozen market: cancel soon
        max_book_age=1e9,  # the frozen market publishes no book changes
        max_live_packages=10_000,
        breaker=BreakerConfig(max_orphans=1_000_000),  # the reaction runs orphan packages on purpose
        keep_warm=keep_warm,
    )
    journal = Journal.open(journal_dir / f"{name}.db", Durability.PROCESS)
    try:
        async with open_ccxt_venue(config) as venue:
            stamps = Stamps()
            venue.set_tap(stamps.tap)
            engine = Engine(venue, journal, engine_config)
            async with engine.running([SPOT, PERP]):
                yield WireRig(base, venue, engine, stamps)
    finally:
        journal.close()


async def _settled(engine: Engine, package_id: str) -> PackageCore:
    """Wait until the package's actor ended; its final core (the engine releases a flat package's)."""
    handle = engine.handles[package_id]  # right after submit: its actor has not run yet
    with trio.fail_after(10.0):
        await handle.done.wait()
    return handle.core


# --- 1. skew ------------------------------------------------------------------------------------------


async def _plain_pair(rig: WireRig, mode: str) -> float:
    """One pair through unmodified ccxt `create_order` on the venue's own ccxt instances (asyncio side)."""
    spot_ex, perp_ex = rig.venue._spot.ex, rig.venue._perp.ex
    book_s, book_p = rig.engine.books[SPOT], rig.engine.books[PERP]
    assert book_s.best_bid is not None and book_p.best_ask is not None
    # Resting, away from the touch: nothing fills on the frozen market.
    bid = (book_s.best_bid * Decimal("0.99")).quantize(rig.engine.markets[SPOT].tick_size)
    ask = (book_p.best_ask * Decimal("1.01")).quantize(rig.engine.markets[PERP].tick_size)
    cid_s, cid_p = rig.cid("S"), rig.cid("P")

    async def pair() -> None:
        params_s, params_p = (
            {"postOnly": True, "newClientOrderId": cid_s},
            {"postOnly": True, "newClientOrderId": cid_p},
        )
        a = spot_ex.create_order(SPOT, "limit", "buy", float(QTY), float(bid), params_s)
        b = perp_ex.create_order(PERP, "limit", "sell", float(QTY), float(ask), params_p)
        if mode == "sequential":
            await a
            await b
        else:
            await asyncio.gather(a, b)

    rig.stamps.writes.clear()
    with transport_writes(rig.stamps):
        await trio_asyncio.aio_as_trio(pair)()
    writes = list(rig.stamps.writes)
    await rig.venue.cancel_order(SPOT, cid_s)
    await rig.venue.cancel_order(PERP, cid_p)
    if len(writes) != 2:
        raise RuntimeError(f"{mode}: expected 2 socket writes for one pair, saw {len(writes)}")
    return (writes[1] - writes[0]) / 1000


async def _engine_pair(rig: WireRig) -> float:
    """One package through the engine: the actor arms both legs and the venue releases them."""
    package_id = rig.engine.submit(PackageSpec(SPOT, PERP, QTY, min_spread=Decimal(-1)))
    core = await _settled(rig.engine, package_id)
    prefix = core.plan.client_id_prefix
    spot, perp = rig.stamps.sends.get(f"{prefix}-SE0"), rig.stamps.sends.get(f"{prefix}-PE0")
    if spot is None or perp is None:
        raise RuntimeError(f"package {package_id} ({core.state}): a leg was never written")
    return abs(perp - spot) / 1000


async def measure_skew(rig: WireRig, pairs: int, warmup: int = 10) -> dict[str, list[float]]:
    """Skew samples (µs) per mode, the modes interleaved pair by pair so that noise hits all alike."""
    out: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(warmup + pairs):
        for mode in MODES:
            sample = await (_engine_pair(rig) if mode == "legguard" else _plain_pair(rig, mode))
            if i >= warmup:
                out[mode].append(sample)
    return out


# --- 2. kill-switch reaction --------------------------------------------------------------------------


@dataclass(slots=True)
class Reaction:
    reaction_us: list[float] = field(default_factory=list)  # decisive answer in -> first kill-switch bytes out
    unwind_us: list[float] = field(default_factory=list)  # cancel answer in -> unwind order bytes out
    reject_last: int = 0  # samples where the rejection (not the other leg's ack) was the decisive answer
    skipped: int = 0  # samples that did not take the scripted path (reported, never silently dropped)
    # Samples decided on the user stream's report of the resting leg, read before its REST acknowledgement:
    # the stream is read by ccxt, unstamped, so the decisive moment is unknown (reported, not measured).
    stream_decided: int = 0
    # Samples whose cancel the venue wrote as soon as it read the decisive answer, armed by the step before it
    # (`CcxtVenue.cancel_on_answer`), instead of from that answer's own step.
    on_answer: int = 0


async def measure_reaction(rig: WireRig, samples: int, warmup: int = 3, plain: Reaction | None = None) -> Reaction:
    """The spot leg rests half filled (emulator `partial_fill`), the perp leg is rejected (-5022, post-only
    would cross): the kill switch cancels the spot rest, then sells what was bought. `plain`: as many samples
    again, interleaved one for one, with no cancel armed for an answer (`engine.cancel_on_answer` off: the
    cancel leaves from the decisive answer's step), measured into `plain`."""
    out = Reaction()
    arm = rig.engine.cancel_on_answer
    try:
        for i in range(warmup + samples * (1 if plain is None else 2)):
            into = plain if plain is not None and i >= warmup and (i - warmup) % 2 else out
            rig.engine.cancel_on_answer = None if into is plain else arm
            await _reaction_sample(rig, into if i >= warmup else None)
    finally:
        rig.engine.cancel_on_answer = arm
    return out


async def _reaction_sample(rig: WireRig, out: Reaction | None) -> None:
    """One kill-switch package, measured into `out` (None: a warm-up)."""
    for fault in (
        {"fault": "partial_fill", "market": "spot", "ratio": 0.5},
        {"fault": "reject", "market": "linear", "code": -5022, "path": "/order", "method": "POST"},
    ):
        await trio.to_thread.run_sync(_control, rig.base, "/_emulator/faults", fault)
    written = rig.venue.cancels_on_answer
    package_id = rig.engine.submit(PackageSpec(SPOT, PERP, QTY, min_spread=Decimal(-1)))
    core = await _settled(rig.engine, package_id)
    if out is None:
        return
    p = core.plan.client_id_prefix
    s = rig.stamps
    spot_ack, perp_reject = s.answers.get(f"{p}-SE0"), s.answers.get(f"{p}-PE0")
    cancel_out, cancel_in = s.sends.get(f"cancel:{p}-SE0"), s.answers.get(f"cancel:{p}-SE0")
    unwind_out = s.sends.get(f"{p}-SU0")
    if None in (spot_ack, perp_reject, cancel_out) or core.state is not State.FLAT:
        out.skipped += 1
        return
    assert spot_ack is not None and perp_reject is not None and cancel_out is not None
    decisive = max(spot_ack, perp_reject)
    if cancel_out < decisive:
        out.stream_decided += 1
    else:
        out.reject_last += perp_reject >= spot_ack
        out.on_answer += rig.venue.cancels_on_answer - written
        out.reaction_us.append((cancel_out - decisive) / 1000)
    if cancel_in is not None and unwind_out is not None:
        out.unwind_us.append((unwind_out - cancel_in) / 1000)


# --- one run ------------------------------------------------------------------------------------------


async def wire_run(pairs: int, reactions: int, log: Callable[[str], None], *, warmed: int = 0) -> dict[str, Any]:
    """Skew and the kill switch's reaction, the engine as it runs by default; `warmed` > 0: then as many
    reactions again with the decision path kept warm (`keep_warm` = WARM_INTERVAL), on the same emulator."""
    with emulator_process() as base, tempfile.TemporaryDirectory(prefix="legguard-bench-") as tmp:
        async with wire_rig(base, Path(tmp)) as rig:
            log(f"skew: {pairs} pairs per mode against the emulator at {base} (separate process)")
            skew = await measure_skew(rig, pairs)
            log(
                f"kill switch: {reactions} packages with a rejected perp leg and a half-filled spot leg, and as many "
                "interleaved with no cancel armed for the resting leg's answer"
            )
            plain = Reaction()
            reaction = await measure_reaction(rig, reactions, plain=plain)
        out: dict[str, Any] = {"skew": skew, "reaction": reaction, "reaction_plain": plain}
        if warmed:
            async with wire_rig(base, Path(tmp), keep_warm=WARM_INTERVAL, name="wire-warmed") as rig:
                log(f"kill switch: {warmed} packages again, keep_warm = {WARM_INTERVAL}")
                out["reaction_warmed"] = await measure_reaction(rig, warmed)
    return out


if __name__ == "__main__":  # pragma: no cover
    _serve()
