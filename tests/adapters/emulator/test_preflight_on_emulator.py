"""The preflight over the wire: ccxt's signed reads against the emulator, and a refusal sends nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import trio
from conftest import ETH, ETH_PERP, emulated

from legguard.adapters.emulator._emulator import Emulator
from legguard.domain import MarketKind
from legguard.engine.app._preflight import PreflightReport, preflight
from legguard.engine.app._strategy import Pair

PAIRS = (Pair(ETH, ETH_PERP, Decimal("0.05")),)


@asynccontextmanager
async def wall_clock(emu: Emulator) -> AsyncIterator[None]:
    """The rig's emulator runs a manual clock, frozen since it was built; the clock check (and every signed
    request's timestamp) compares it with the wall clock. Keep it at now while the preflight runs, else a
    slow step under load reads as a skewed venue clock (one sync before the preflight was not enough in CI)."""

    def sync() -> None:
        emu.advance(max(0.0, time.time() - emu.now()))

    async def follow() -> None:
        while True:
            sync()
            await trio.sleep(0.01)

    sync()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        yield
        nursery.cancel_scope.cancel()


def failures(report: PreflightReport) -> dict[str, str]:
    return {c.name: c.found for c in report.failures}


async def test_a_healthy_emulator_account_passes_every_check() -> None:
    async with emulated(stream_ready_timeout=0) as rig, wall_clock(rig.emu):
        report = await preflight(rig.venue, PAIRS, where="emulator", leverage=rig.emu.engine.leverage,
                                 margin_type="cross")  # fmt: skip

    assert report.ok, failures(report)
    found = {c.name: c.found for c in report.checks}
    assert found["credentials spot"] == found["credentials USDⓈ-M"] == "signed read ok, canTrade"
    assert found["position mode"] == "one-way (dualSidePosition=false)"
    assert found["leverage/margin"] == f"{ETH_PERP} {rig.emu.engine.leverage}x cross"


async def test_hedge_mode_and_wrong_leverage_are_refused_and_nothing_is_sent() -> None:
    async with emulated(stream_ready_timeout=0) as rig:
        rig.emu.dual_side_position = True
        async with wall_clock(rig.emu):
            report = await preflight(rig.venue, PAIRS, where="emulator", leverage=rig.emu.engine.leverage + 1)
        orders = [rig.orders(kind) for kind in (MarketKind.SPOT, MarketKind.LINEAR)]

    failed = {c.name: c.found for c in report.failures}
    assert failed["position mode"] == "hedge mode (dualSidePosition=true)"
    assert "leverage" in failed["leverage/margin"]
    assert orders == [{}, {}]


async def test_a_wrong_secret_fails_both_credential_checks() -> None:
    async with emulated(stream_ready_timeout=0, secret="not-the-emulator-secret") as rig:
        async with wall_clock(rig.emu):
            report = await preflight(rig.venue, PAIRS, where="emulator")
        orders = [rig.orders(kind) for kind in (MarketKind.SPOT, MarketKind.LINEAR)]

    assert [c.name for c in report.failures] == ["credentials spot", "credentials USDⓈ-M"]
    assert all("signed read was refused" in c.found for c in report.failures)
    assert "not-the-emulator-secret" not in str(report.to_dict())
    assert orders == [{}, {}]
