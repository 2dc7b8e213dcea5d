"""The perp account's margin figures and the wallet transfer, through unmodified ccxt against the emulator
(`/fapi/v2/account`, `/sapi/v1/asset/transfer`): what the margin guard and the collateral mover use."""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio
import trio.testing
from conftest import emulated

from legguard.domain import VenueError


@pytest.fixture
def clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    mock_clock.rate = 1.0
    return mock_clock


async def test_margin_figures_and_transfers_both_ways(clock: trio.testing.MockClock) -> None:
    async with emulated() as rig:
        start = await rig.venue.fetch_margin()
        assert start.wallet == start.margin_balance == 1_000_000
        assert start.maint_margin == 0 and start.headroom == 1

        await rig.venue.transfer("USDT", Decimal("1000"), to_perp=False)
        assert (await rig.venue.fetch_margin()).wallet == 999_000
        assert rig.emu.engine.balances()["USDT"].free == 1_001_000

        await rig.venue.transfer("USDT", Decimal("250.5"), to_perp=True)
        assert (await rig.venue.fetch_margin()).wallet == Decimal("999250.5")
        assert rig.emu.engine.balances()["USDT"].free == Decimal("1000749.5")


async def test_a_transfer_beyond_the_balance_is_refused_and_moves_nothing(clock: trio.testing.MockClock) -> None:
    async with emulated() as rig:
        with pytest.raises(VenueError, match="insufficient balance"):
            await rig.venue.transfer("USDT", Decimal("5000000"), to_perp=True)
        assert rig.emu.engine.perp_wallet() == 1_000_000
        assert rig.emu.engine.balances()["USDT"].free == 1_000_000
