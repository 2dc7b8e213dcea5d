"""`legguard emulator`: serve Binance spot + USDⓈ-M on loopback, backed by the matching engine, so that an
unmodified ccxt / ccxt.pro client (and `legguard run` with the ccxt venue) trades against it offline."""

from __future__ import annotations

import asyncio
import json
import signal
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from legguard.adapters.emulator._emulator import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    DEFAULT_HOST,
    DEFAULT_PORT,
    FUNDING_INTERVAL,
    Emulator,
)
from legguard.adapters.emulator._routes import routes_markdown
from legguard.adapters.emulator._scenario import Scenario, ScenarioError, parse_wallet, set_perp_wallet
from legguard.adapters.emulator._server import serve_emulator


def emulator(
    host: Annotated[str, typer.Option(help="Address to listen on (the control API answers loopback only).")] = (
        DEFAULT_HOST
    ),
    port: Annotated[int, typer.Option(help="Plain HTTP/WS port (REST, websockets, /_emulator/ control).")] = (
        DEFAULT_PORT
    ),
    tls_port: Annotated[
        int | None,
        typer.Option(
            help="HTTPS port for ccxt's exact Binance error mapping (default or 0: any free port, -1: none).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the market driver (books, prices).")] = 0,
    api_key: Annotated[str, typer.Option(help="API key clients must send.", envvar="LEGGUARD_EMULATOR_KEY")] = (
        DEFAULT_API_KEY
    ),
    api_secret: Annotated[
        str,
        typer.Option(
            help="HMAC secret clients sign with (default: legguard.adapters.emulator.DEFAULT_API_SECRET).",
            envvar="LEGGUARD_EMULATOR_SECRET",
            show_default=False,
        ),
    ] = DEFAULT_API_SECRET,
    tick: Annotated[float, typer.Option(help="Seconds between market moves.")] = 1.0,
    seconds: Annotated[float, typer.Option(help="Stop after this many seconds (0: run until interrupted).")] = 0.0,
    scenario: Annotated[
        Path | None,
        typer.Option(help="TOML timeline to play (price moves, funding flips, faults, stream lag): docs/emulator.md."),
    ] = None,
    funding_interval: Annotated[
        float | None,
        typer.Option(help="Seconds between funding times (default: the scenario's, else 8 h)."),
    ] = None,
    perp_wallet: Annotated[
        str | None,
        typer.Option(help="USDT in the USDⓈ-M wallet at start (default: the scenario's, else 1,000,000)."),
    ] = None,
    routes: Annotated[
        bool, typer.Option("--routes", help="Print the served endpoints and streams (Markdown) and exit.")
    ] = False,
) -> None:
    """Serve Binance spot + USDⓈ-M (REST and websockets) on loopback; prints the ccxt configuration to use."""
    console = Console(soft_wrap=True)  # URLs and paths stay copyable
    if routes:
        print(routes_markdown())  # plain: it is pasted into docs/emulator.md
        return
    if tls_port is None:
        tls_port = 0  # any free port: a second emulator on another --port must not collide on TLS
    for name, value, ok in (
        ("port", port, 0 <= port <= 65535),
        ("tls-port", tls_port, -1 <= tls_port <= 65535),
        ("tick", tick, tick > 0),
        ("seconds", seconds, seconds >= 0),
        ("funding-interval", funding_interval, funding_interval is None or funding_interval > 0),
    ):
        if not ok:
            console.print(f"[red]error:[/red] --{name}: {value!r} is out of range")
            raise typer.Exit(2)
    timeline: Scenario | None = None
    if scenario is not None:
        try:
            timeline = Scenario.load(scenario)
        except ScenarioError as exc:
            console.print(f"[red]error:[/red] --scenario {scenario}: {exc}")
            raise typer.Exit(2) from None
    wallet: Decimal | None = None
    if perp_wallet is not None:
        try:
            wallet = parse_wallet(perp_wallet, "--perp-wallet")
        except ScenarioError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    wallet = wallet or (timeline.perp_wallet if timeline else None)
    interval = funding_interval or (timeline.funding_interval if timeline else None) or FUNDING_INTERVAL
    options = _Options(seed, api_key, api_secret, tick, seconds, interval, timeline, wallet)
    try:
        asyncio.run(_serve(console, host, port, None if tls_port < 0 else tls_port, options))
    except OSError as exc:  # typically: the port is taken
        err = Console(stderr=True, soft_wrap=True, highlight=False)
        err.print(f"[red]error:[/red] cannot listen on {host}: {exc.strerror or exc} (choose another --port)")
        raise typer.Exit(2) from None


@dataclass(frozen=True)
class _Options:
    seed: int
    api_key: str
    api_secret: str
    tick: float
    seconds: float
    funding_interval: float
    scenario: Scenario | None
    perp_wallet: Decimal | None = None


async def _serve(console: Console, host: str, port: int, tls_port: int | None, o: _Options) -> None:
    async with serve_emulator(
        host,
        port,
        tls_port=tls_port,
        seed=o.seed,
        api_key=o.api_key,
        api_secret=o.api_secret,
        tick_seconds=o.tick,
        funding_interval=o.funding_interval,
    ) as emu:
        _banner(console, emu, secret_is_default=o.api_secret == DEFAULT_API_SECRET)
        if o.scenario is not None:
            try:
                o.scenario.install(emu)
            except ScenarioError as exc:
                console.print(f"[red]error:[/red] scenario: {exc}")
                raise typer.Exit(2) from None
            console.print(f"scenario [bold]{o.scenario.name}[/bold] (funding every {o.funding_interval:g} s):")
            for line in o.scenario.describe():
                console.print(f"  {line}")
        if o.perp_wallet is not None:  # after the scenario's own: --perp-wallet wins
            set_perp_wallet(emu, o.perp_wallet)
            console.print(f"USDⓈ-M wallet {o.perp_wallet} USDT")
        seconds = o.seconds
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if seconds > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=seconds)
            else:
                await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    console.print("emulator stopped")


def _banner(console: Console, emu: Emulator, *, secret_is_default: bool) -> None:
    base = f"http://{emu.host}:{emu.port}"
    console.print(f"[bold]legguard emulator[/bold] (Binance spot + USDⓈ-M), seed {emu.seed}")
    console.print(f"  REST + websockets  {base}   (spot /api/v3, USDⓈ-M /fapi/v1|v2|v3)")
    console.print(f"  API key            {emu.api_key}")
    console.print(f"  API secret         {'the documented default' if secret_is_default else '(as given; not shown)'}")
    console.print(f"  ccxt urls['api']   GET {base}/_emulator/ccxt-urls   (plain http; ?tls=1 for the TLS ones)")
    if emu.tls_port is not None:
        console.print(f"  TLS                https://{emu.host}:{emu.tls_port}")
        console.print(f"  ccxt config        GET {base}/_emulator/ccxt-config (TLS: Binance's exact exception mapping)")
        config = emu.ccxt_config("binanceusdm")
        hint = {"hostname": config["hostname"], "cafile": config["cafile"]}
        console.print(f"                     {json.dumps(hint)} + urls from ccxt-config")
    console.print(
        f"  control            {base}/_emulator/state | faults | move | trade | liquidate | funding | lag | advance"
    )
    console.print("  endpoints, streams, faults, scenarios: docs/emulator.md")
    console.print("Ctrl-C to stop.")
