"""The preflight over the wire: ccxt's signed reads against the emulator, and a refusal sends nothing."""

from __future__ import annotations

from decimal import Decimal

from conftest import ETH, ETH_PERP, emulated

from legguard.domain import MarketKind
from legguard.engine.app._preflight import preflight
from legguard.engine.app._strategy import Pair

PAIRS = (Pair(ETH, ETH_PERP, Decimal("0.05")),)


async def test_a_healthy_emulator_account_passes_every_check() -> None:
    async with emulated(stream_ready_timeout=0) as rig:
        report = await preflight(rig.venue, PAIRS, where="emulator", leverage=rig.emu.engine.leverage,
                                 margin_type="cross")  # fmt: skip

    assert report.ok, report.to_dict()
    found = {c.name: c.found for c in report.checks}
    assert found["credentials spot"] == found["credentials USDⓈ-M"] == "signed read ok, canTrade"
    assert found["position mode"] == "one-way (dualSidePosition=false)"
    assert found["leverage/margin"] == f"{ETH_PERP} {rig.emu.engine.leverage}x cross"


async def test_hedge_mode_and_wrong_leverage_are_refused_and_nothing_is_sent() -> None:
    async with emulated(stream_ready_timeout=0) as rig:
        rig.emu.dual_side_position = True
        report = await preflight(rig.venue, PAIRS, where="emulator", leverage=rig.emu.engine.leverage + 1)
        orders = [rig.orders(kind) for kind in (MarketKind.SPOT, MarketKind.LINEAR)]

    failed = {c.name: c.found for c in report.failures}
    assert failed["position mode"] == "hedge mode (dualSidePosition=true)"
    assert "leverage" in failed["leverage/margin"]
    assert orders == [{}, {}]


async def test_a_wrong_secret_fails_both_credential_checks() -> None:
    async with emulated(stream_ready_timeout=0, secret="not-the-emulator-secret") as rig:
        report = await preflight(rig.venue, PAIRS, where="emulator")
        orders = [rig.orders(kind) for kind in (MarketKind.SPOT, MarketKind.LINEAR)]

    assert [c.name for c in report.failures] == ["credentials spot", "credentials USDⓈ-M"]
    assert all("signed read was refused" in c.found for c in report.failures)
    assert "not-the-emulator-secret" not in str(report.to_dict())
    assert orders == [{}, {}]
