"""`venue.testnet = true` selects ccxt's sandbox URLs on both markets, and a testnet venue can never hold a
mainnet URL (inspected on the ccxt instances themselves, without any network)."""

from __future__ import annotations

import urllib.parse

import pytest
import trio
import trio_asyncio

from legguard.adapters.ccxt._venue import CcxtVenue, CcxtVenueConfig, _all_urls

MAINNET_HOSTS = ("binance.com",)


def hosts(venue: CcxtVenue) -> dict[str, set[str]]:
    out = {}
    for side in (venue._spot, venue._perp):
        out[side.exchange_id] = {urllib.parse.urlsplit(url).hostname or "" for url in _all_urls(side.ex.urls["api"])}
    return out


async def test_a_testnet_venue_has_only_testnet_urls() -> None:
    async with trio_asyncio.open_loop():
        venue = CcxtVenue(CcxtVenueConfig(api_key="k", secret="s", testnet=True, name="binance testnet"))
        try:
            found = hosts(venue)
        finally:
            await venue.aclose()

    assert set(found) == {"binance", "binanceusdm"}
    for exchange_id, names in found.items():
        assert names, exchange_id
        assert not [h for h in names if h.endswith(MAINNET_HOSTS)], (exchange_id, names)
        assert all(h.endswith(("testnet.binance.vision", "binancefuture.com")) for h in names), names
    assert "testnet.binancefuture.com" in found["binanceusdm"]
    assert "testnet.binance.vision" in found["binance"]


async def test_a_mainnet_venue_talks_to_binance_com() -> None:
    """The contrast that keeps the test above honest: without testnet, the same inspection finds mainnet."""
    async with trio_asyncio.open_loop():
        venue = CcxtVenue(CcxtVenueConfig(api_key="k", secret="s"))
        try:
            found = hosts(venue)
        finally:
            await venue.aclose()

    assert "fapi.binance.com" in found["binanceusdm"] and "api.binance.com" in found["binance"]


def test_testnet_and_explicit_urls_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="testnet"):
        CcxtVenueConfig(api_key="k", secret="s", testnet=True, urls={"binance": {"public": "http://x"}})


def test_the_repr_says_testnet_and_hides_the_key() -> None:
    text = repr(CcxtVenueConfig(api_key="key-123456", secret="secret-123456", testnet=True))
    assert "binance testnet" in text and "key-123456" not in text and "secret-123456" not in text


async def test_refill_budgets_waits_until_the_preflight_spend_is_back(autojump_clock: object) -> None:
    """The preflight's reads spend the local request budget; the start waits for it to refill, so that
    recovery, the first books and the dead-man's switch are not refused by the engine's own limiter."""
    async with trio_asyncio.open_loop():
        venue = CcxtVenue(CcxtVenueConfig(api_key="k", secret="s", testnet=True))
        try:
            for side in (venue._spot, venue._perp):
                side.budget.take(60.0, reducing=True, what="preflight reads")
            started = trio.current_time()

            await venue.refill_budgets()

            waited = trio.current_time() - started
            for side in (venue._spot, venue._perp):
                side.budget.take(0.0, reducing=True, what="look")
                assert side.budget.tokens == pytest.approx(side.budget.burst)
        finally:
            await venue.aclose()
    assert 0 < waited < 10


@pytest.mark.parametrize(("testnet", "name"), [(True, "binance testnet"), (False, "binance mainnet")])
async def test_the_run_config_decides_testnet_or_mainnet(
    monkeypatch: pytest.MonkeyPatch, testnet: bool, name: str
) -> None:
    """From `[venue] kind = "binance", testnet = ...` to the CcxtVenueConfig the venue is built from."""
    from contextlib import asynccontextmanager

    from legguard.adapters.ccxt import _venue
    from legguard.engine.app._config import VenueConfig

    built: list[CcxtVenueConfig] = []

    @asynccontextmanager
    async def capture(config: CcxtVenueConfig, before_streams: object = None):  # type: ignore[no-untyped-def]
        built.append(config)
        yield None

    monkeypatch.setattr(_venue, "open_ccxt_venue", capture)
    monkeypatch.setenv("LG_K", "key")
    monkeypatch.setenv("LG_S", "secret")
    settings = VenueConfig(kind="binance", api_key_env="LG_K", api_secret_env="LG_S", testnet=testnet)

    async with _venue.open_ccxt_venue_from_config(settings):
        pass

    assert [(c.testnet, c.name, c.urls) for c in built] == [(testnet, name, None)]
