"""Scenarios: the shipped TOML timelines parse, play on the emulator's clock (manual here, so every step is
exact), do what they say on the wire, and a bad file is refused naming the event and the field."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from legguard.adapters.emulator._emulator import Emulator
from legguard.adapters.emulator._scenario import Scenario, ScenarioError
from legguard.adapters.emulator._server import serve_emulator
from legguard.cli import app

D = Decimal
EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "scenarios"


def play(path: Path, scenario: Callable[[Emulator], Awaitable[Any]], seed: int = 7) -> Any:
    timeline = Scenario.load(path)

    async def main() -> Any:
        async with serve_emulator(
            seed=seed, autoclock=False, tls_port=None, funding_interval=timeline.funding_interval or 8 * 3600.0
        ) as emu:
            timeline.install(emu)
            return await asyncio.wait_for(scenario(emu), 30)

    return asyncio.run(main())


async def get(emu: Emulator, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{emu.port}{path}") as resp:
        return resp.status, (await resp.json() if resp.content_type == "application/json" else await resp.text())


def test_every_shipped_scenario_parses() -> None:
    shipped = sorted(EXAMPLES.glob("*.toml"))
    assert len(shipped) >= 3
    for path in shipped:
        assert Scenario.load(path).events, path


def test_the_squeeze_scenario_sets_a_small_perp_wallet_at_20x_and_moves_the_perps_up() -> None:
    timeline = Scenario.load(EXAMPLES / "perp_squeeze.toml")
    assert (timeline.perp_wallet, timeline.leverage) == (D(200), 20)
    linear = [e for e in timeline.events if e.action == "move" and e.spec["market"] == "linear"]
    assert linear and all(e.spec["pct"] > 0 for e in linear)  # up: a move against the short

    async def scenario(emu: Emulator) -> None:
        timeline.install(emu)
        assert emu.engine.perp_wallet() == 200
        assert set(emu.leverage.values()) == {20}

    async def main() -> None:
        async with serve_emulator(seed=0, autoclock=False, tls_port=None) as emu:
            await scenario(emu)

    asyncio.run(main())


def test_perp_crash_drops_the_perp_8_percent_over_5_seconds_and_funding_flips() -> None:
    async def scenario(emu: Emulator) -> list[Any]:
        perp, spot = emu.engine.markets["ETH/USDT:USDT"], emu.engine.markets["ETH/USDT"]
        emu.advance(59.9)
        before, spot_before = emu.driver.mid_of(perp), emu.driver.mid_of(spot)
        emu.advance(2.6)  # half-way through the fall
        halfway = emu.driver.mid_of(perp)
        emu.advance(2.6)
        after, spot_after = emu.driver.mid_of(perp), emu.driver.mid_of(spot)
        assert D("0.945") < halfway / before < D("0.975")
        assert D("0.915") < after / before < D("0.925")
        assert D("0.955") < spot_after / spot_before < D("0.965")
        emu.advance(60)  # the funding time after t=65 s settles at the flipped rate
        assert emu.data.funding_history[-1].rate == D("-0.0005")
        status, rates = await get(emu, "/fapi/v1/fundingRate?symbol=ETHUSDT&limit=1")
        assert status == 200 and rates[0]["fundingRate"] == "-0.00050000"
        return [(e["action"], e.get("symbol")) for e in emu.state()["scenario"]]

    path = EXAMPLES / "perp_crash.toml"
    played = play(path, scenario)
    assert played == [("move", "ETHUSDT"), ("move", "ETHUSDT"), ("funding", "ETHUSDT")]


def test_the_same_seed_plays_the_same_market() -> None:
    async def scenario(emu: Emulator) -> list[str]:
        marks = []
        for _ in range(70):
            emu.advance(1.0)
            marks.append(str(emu.engine.mark_price("ETH/USDT:USDT")))
        return marks

    path = EXAMPLES / "perp_crash.toml"
    assert play(path, scenario, seed=4) == play(path, scenario, seed=4)


def test_gateway_outage_answers_503_for_20_seconds_and_the_user_stream_lags() -> None:
    async def scenario(emu: Emulator) -> None:
        emu.advance(29.5)
        assert (await get(emu, "/fapi/v1/time"))[0] == 200
        emu.advance(1.0)
        for _ in range(3):  # every request while it lasts, not just one
            status, body = await get(emu, "/fapi/v1/time")
            assert status == 503 and "503" in body
        assert (await get(emu, "/api/v3/time"))[0] == 200  # spot is fine
        emu.advance(20.0)
        assert (await get(emu, "/fapi/v1/time"))[0] == 200
        assert emu.user_stream_lag == pytest.approx(0.4)

    play(EXAMPLES / "gateway_outage.toml", scenario)


def test_lagged_user_events_arrive_only_after_the_lag_and_in_order() -> None:
    async def scenario(emu: Emulator) -> None:
        delivered: list[str] = []
        emu.hub._perp_user_now = lambda event, key: delivered.append(event["e"])  # type: ignore[method-assign]
        emu.new_listen_key()
        emu.user_stream_lag = 0.4
        emu.hub.perp_user({"e": "first"})
        emu.advance(0.2)
        emu.hub.perp_user({"e": "second"})
        emu.advance(0.199)
        assert delivered == []
        emu.advance(0.002)
        assert delivered == ["first"]
        emu.advance(0.2)
        assert delivered == ["first", "second"]

    async def main() -> None:
        async with serve_emulator(seed=1, autoclock=False, tls_port=None) as emu:
            await scenario(emu)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"events": [{"at": 1, "action": "explode"}]}, "events[0].action: 'explode' is not one of"),
        ({"events": [{"at": -1, "action": "lag", "user_stream_ms": 1}]}, "events[0].at: must be a number"),
        (
            {"events": [{"at": 1, "action": "move", "symbol": "ETHUSDT"}]},
            "events[0]: give exactly one of 'pct'",
        ),
        (
            {"events": [{"at": 1, "action": "move", "symbol": "ETHUSDT", "pct": "x"}]},
            "events[0].pct: 'x' is not a number",
        ),
        (
            {"events": [{"at": 1, "action": "fault", "fault": {"fault": "http_error", "status": 99}}]},
            "events[0].fault.status: an http_error fault needs an HTTP status 400-599",
        ),
        ({"events": [{"at": 1, "action": "funding", "symbol": "ETHUSDT", "rate": 0.5}]}, "beyond +-3 %"),
        ({"emulator": {"funding_interval": 0}}, "emulator.funding_interval: must be a number"),
        ({"emulator": {"perp_wallet": "-5"}}, "emulator.perp_wallet: must be an amount of USDT > 0"),
        ({"emulator": {"perp_wallet": "lots"}}, "emulator.perp_wallet: 'lots' is not a number of USDT"),
        ({"emulator": {"leverage": 200}}, "emulator.leverage: must be a whole number 1..125"),
        ({"emulator": {"wallet": 1}}, "emulator: a table with at most 'funding_interval', 'perp_wallet'"),
        ({"events": [{"at": 1, "action": "lag", "user_stream_ms": 1, "pct": 3}]}, "unknown key(s) ['pct']"),
    ],
)
def test_a_bad_scenario_names_the_event_and_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        Scenario.parse(data)
    assert message in str(err.value)


def test_an_unknown_symbol_is_refused_when_installed() -> None:
    timeline = Scenario.parse({"events": [{"at": 1, "action": "move", "symbol": "DOGEUSDT", "pct": 1}]})

    async def main() -> None:
        async with serve_emulator(autoclock=False, tls_port=None) as emu:
            with pytest.raises(ScenarioError, match=r"events\[0\].symbol: 'DOGEUSDT' is not one of"):
                timeline.install(emu)

    asyncio.run(main())


def test_the_cli_plays_a_scenario_and_refuses_a_bad_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "emulator",
            "--port",
            "0",
            "--tls-port",
            "-1",
            "--seconds",
            "0.05",
            "--scenario",
            str(EXAMPLES / "perp_crash.toml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "scenario ETH perp crash (funding every 60 s)" in result.output and "t+60s move" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[[events]]\nat = 1\naction = "move"\nsymbol = "ETHUSDT"\npct = "lots"\n')
    result = CliRunner().invoke(app, ["emulator", "--port", "0", "--seconds", "0.05", "--scenario", str(bad)])
    assert result.exit_code == 2
    assert "events[0].pct: 'lots' is not a number" in " ".join(result.output.split())
