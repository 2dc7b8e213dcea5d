"""The preflight: every check passes on a healthy venue, and each broken account setting fails exactly its
own check with one line naming what was found and how to fix it. The account reads are faked here around the
simulated venue; tests/adapters/test_preflight_on_emulator.py runs the same checks over the wire."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import pytest

from legguard.adapters.sim._venue import SimConfig, SimVenue, open_sim_venue
from legguard.domain import AuthenticationFailed, MarketKind, OutcomeUnknown
from legguard.engine.app._preflight import AccountProbe, PreflightFailed, preflight
from legguard.engine.app._strategy import Pair

PAIRS = (Pair("ETH/USDT", "ETH/USDT:USDT", Decimal("0.05")), Pair("BTC/USDT", "BTC/USDT:USDT", Decimal("0.01")))


class Probed:
    """The simulated venue plus the account reads a wire venue has, answering what the test says."""

    def __init__(self, sim: SimVenue, **answers: Any) -> None:
        self._sim = sim
        self.answers = {"offset": 0.01, "spot": True, "perp": True, "dual": False, "leverage": 5,
                        "margin": "cross", **answers}  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sim, name)

    def _answer(self, key: str) -> Any:
        value = self.answers[key]
        if isinstance(value, BaseException):
            raise value
        return value

    async def load_markets(self) -> Any:
        return await self._sim.load_markets()

    async def fetch_balance(self) -> Any:
        return await self._sim.fetch_balance()

    async def fetch_order_book(self, symbol: str, limit: int = 20) -> Any:
        return await self._sim.fetch_order_book(symbol, limit)

    async def clock_offset(self) -> float:
        return float(self._answer("offset"))

    async def can_trade(self, kind: MarketKind) -> bool:
        return bool(self._answer("spot" if kind is MarketKind.SPOT else "perp"))

    async def dual_side_position(self) -> bool:
        return bool(self._answer("dual"))

    async def perp_symbol_settings(self, symbols: Sequence[str]) -> Mapping[str, tuple[int, str]]:
        return {s: (int(self._answer("leverage")), str(self._answer("margin"))) for s in symbols}


async def test_the_simulated_venue_passes_every_check() -> None:
    async with open_sim_venue(SimConfig(seed=1, latency_ms=0)) as sim:
        report = await preflight(sim, PAIRS, where="sim")

    assert report.ok, report.to_dict()
    names = [c.name for c in report.checks]
    assert names == ["reachable", "clock", "credentials", "position mode", "symbols", "balances"]


async def test_a_wire_venue_with_a_healthy_account_passes_every_check() -> None:
    async with open_sim_venue(SimConfig(seed=1, latency_ms=0)) as sim:
        venue = Probed(sim)
        assert isinstance(venue, AccountProbe)
        report = await preflight(venue, PAIRS, where="test", leverage=5, margin_type="cross")  # type: ignore[arg-type]

    assert report.ok, report.to_dict()
    assert [c.name for c in report.checks] == ["reachable", "clock", "credentials spot", "credentials USDⓈ-M",
                                               "position mode", "leverage/margin", "symbols", "balances"]  # fmt: skip


@pytest.mark.parametrize(
    ("answers", "check", "found", "fix"),
    [
        ({"offset": -2.0}, "clock", "venue clock -2000 ms from ours", "synchronise"),
        ({"offset": 30.0}, "clock", "venue clock +30000 ms from ours", "synchronise"),
        ({"offset": OutcomeUnknown("timeout")}, "clock", "cannot read the server time: timeout", "network"),
        ({"spot": AuthenticationFailed("-2015 Invalid API-key")}, "credentials spot", "-2015 Invalid API-key",
         "venue.api_key_env"),
        ({"perp": False}, "credentials USDⓈ-M", "no trading permission (canTrade=false)", "enable USDⓈ-M trading"),
        ({"dual": True}, "position mode", "hedge mode (dualSidePosition=true)", "one-way"),
        ({"leverage": 20}, "leverage/margin", "ETH/USDT:USDT leverage 20x (config: 5x)", "/fapi/v1/leverage"),
        ({"margin": "isolated"}, "leverage/margin", "ETH/USDT:USDT margin isolated (config: cross)", "marginType"),
    ],
)  # fmt: skip
async def test_each_broken_setting_fails_its_own_check(
    answers: dict[str, Any], check: str, found: str, fix: str
) -> None:
    async with open_sim_venue(SimConfig(seed=1, latency_ms=0)) as sim:
        report = await preflight(Probed(sim, **answers), PAIRS, where="test", leverage=5, margin_type="cross")  # type: ignore[arg-type]

    assert not report.ok
    failed = report.failures
    assert [c.name for c in failed] == [check]
    line = failed[0].line()
    assert line.startswith(f"{check}: FAILED: ") and found in line and "fix: " in line and fix in line
    assert "\n" not in line
    error = PreflightFailed(report)
    assert not error.config_problem  # a venue/account problem: exit 3


async def test_too_little_money_for_one_package_of_every_pair_fails_the_balance_check() -> None:
    config = SimConfig(seed=1, latency_ms=0, balances={"USDT": Decimal(300)})
    async with open_sim_venue(config) as sim:
        report = await preflight(sim, PAIRS, where="sim")

    assert [c.name for c in report.failures] == ["balances"]
    assert "USDT free 300.00 < 400.4" in report.failures[0].found and "fund the account" in report.failures[0].fix


async def test_an_unknown_symbol_is_a_config_problem() -> None:
    pairs = (Pair("NOPE/USDT", "ETH/USDT:USDT", Decimal("0.05")), PAIRS[1])
    async with open_sim_venue(SimConfig(seed=1, latency_ms=0)) as sim:
        report = await preflight(sim, pairs, where="sim")

    assert [c.name for c in report.failures] == ["pairs[0]"]
    assert PreflightFailed(report).config_problem  # exit 2
    assert "known spot markets: BTC/USDT, ETH/USDT" in report.failures[0].found
