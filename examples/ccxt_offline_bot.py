"""Test your own ccxt bot offline: the calls a funding-arbitrage bot makes, against `legguard emulator`.

Plain ccxt / ccxt.pro, nothing from legguard. Start the emulator, then run this script:

    legguard emulator &                      # Binance spot + USDⓈ-M on 127.0.0.1:8765 (TLS on 8766)
    python examples/ccxt_offline_bot.py      # or: --url http://127.0.0.1:8765

It asks the emulator's control API for the ccxt configuration (URLs, the emulator's TLS certificate, the
`hostname` that makes ccxt apply Binance's exact exception tables), signs with the emulator's documented
default credentials, makes each call once and prints one line per call. Exit code 0 when every call worked.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp  # ccxt's own HTTP client
import ccxt.pro as ccxtpro

API_KEY = "legguard-emulator-key"  # the emulator's documented defaults (fake money, loopback only)
API_SECRET = "legguard-emulator-secret"
SPOT, PERP = "ETH/USDT", "ETH/USDT:USDT"
WAIT = 10.0  # seconds any single call may take (streams: until the first message)

# The 28 calls of issue 17 (15 worked before it, 13 did not), then the ones it adds.
ISSUE_CALLS = 28


async def ccxt_config(url: str, exchange_id: str) -> dict[str, Any]:
    """The emulator's ccxt config for `binance` / `binanceusdm`, plus the default credentials."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_emulator/ccxt-config") as resp:
        config: dict[str, Any] = (await resp.json())[exchange_id]
    return {**config, "apiKey": API_KEY, "secret": API_SECRET, "enableRateLimit": False}


class Calls:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    async def run(self, name: str, call: Callable[[], Awaitable[Any]], show: Callable[[Any], str]) -> Any:
        try:
            result = await asyncio.wait_for(call(), WAIT)
        except Exception as exc:
            self.results.append((name, False, f"{type(exc).__name__}: {exc}"[:160]))
            print(f"FAIL {name:<34} {type(exc).__name__}: {exc}"[:200], flush=True)
            return None
        detail = show(result)
        self.results.append((name, True, detail))
        print(f"ok   {name:<34} {detail}", flush=True)
        return result


async def main(url: str) -> list[tuple[str, bool, str]]:
    spot = ccxtpro.binance(await ccxt_config(url, "binance"))
    perp = ccxtpro.binanceusdm(await ccxt_config(url, "binanceusdm"))
    c = Calls()
    try:
        await bot_calls(c, spot, perp)
    finally:
        await spot.close()
        await perp.close()
    return c.results


async def bot_calls(c: Calls, spot: Any, perp: Any) -> None:
    # --- the 28 calls of the issue ---
    await c.run("load_markets spot", spot.load_markets, lambda r: f"{len(r)} markets")
    await c.run("load_markets perp", perp.load_markets, lambda r: f"{len(r)} markets")
    await c.run(
        "fetch_ticker spot", lambda: spot.fetch_ticker(SPOT), lambda r: f"last {r['last']} 24h vol {r['baseVolume']}"
    )
    await c.run(
        "fetch_ticker perp", lambda: perp.fetch_ticker(PERP), lambda r: f"last {r['last']} change {r['percentage']} %"
    )
    book = await c.run(
        "fetch_order_book spot",
        lambda: spot.fetch_order_book(SPOT, 5),
        lambda r: f"bid {r['bids'][0][0]} ask {r['asks'][0][0]}",
    )
    pbook = await c.run(
        "fetch_order_book perp",
        lambda: perp.fetch_order_book(PERP, 5),
        lambda r: f"bid {r['bids'][0][0]} ask {r['asks'][0][0]}",
    )
    await c.run(
        "fetch_trades spot",
        lambda: spot.fetch_trades(SPOT, limit=20),
        lambda r: f"{len(r)} trades, last {r[-1]['price'] if r else None}",
    )
    await c.run(
        "fetch_ohlcv spot 1m",
        lambda: spot.fetch_ohlcv(SPOT, "1m", limit=100),
        lambda r: f"{len(r)} candles, close {r[-1][4]}",
    )
    await c.run(
        "fetch_ohlcv perp 1h",
        lambda: perp.fetch_ohlcv(PERP, "1h", limit=24),
        lambda r: f"{len(r)} candles, close {r[-1][4]}",
    )
    await c.run(
        "fetch_mark_ohlcv perp",
        lambda: perp.fetch_mark_ohlcv(PERP, "1m", limit=10),
        lambda r: f"{len(r)} candles, close {r[-1][4]}",
    )
    await c.run(
        "fetch_funding_rate",
        lambda: perp.fetch_funding_rate(PERP),
        lambda r: f"rate {r['fundingRate']} next {r['fundingDatetime']}",
    )
    await c.run(
        "fetch_trading_fee spot",
        lambda: spot.fetch_trading_fee(SPOT),
        lambda r: f"maker {r['maker']} taker {r['taker']}",
    )
    await c.run(
        "fetch_trading_fee perp",
        lambda: perp.fetch_trading_fee(PERP),
        lambda r: f"maker {r['maker']} taker {r['taker']}",
    )
    await c.run("set_margin_mode cross", lambda: _margin_mode(perp), lambda r: str(r.get("msg", r)))
    await c.run("set_leverage 3", lambda: perp.set_leverage(3, PERP), lambda r: f"leverage {r.get('leverage')}")
    await c.run("fetch_balance spot", spot.fetch_balance, lambda r: f"USDT free {r['USDT']['free']}")
    await c.run("fetch_balance perp", perp.fetch_balance, lambda r: f"USDT total {r['USDT']['total']}")
    await c.run("transfer spot->futures", lambda: spot.transfer("USDT", 100, "spot", "swap"), lambda r: f"id {r['id']}")
    # Entries rest 1 % under the touch (the market keeps moving between calls; post-only must not cross).
    bid = spot.price_to_precision(SPOT, book["bids"][0][0] * 0.99) if book else 0
    pbid = perp.price_to_precision(PERP, pbook["bids"][0][0] * 0.99) if pbook else 0
    order = await c.run(
        "create_order spot post-only",
        lambda: spot.create_order(SPOT, "limit", "buy", 0.05, bid, {"postOnly": True}),
        lambda r: f"{r['status']} id {r['id']}",
    )
    porder = await c.run(
        "create_order perp post-only",
        lambda: perp.create_order(PERP, "limit", "buy", 0.05, pbid, {"postOnly": True}),
        lambda r: f"{r['status']} id {r['id']}",
    )
    await c.run("fetch_open_orders spot", lambda: spot.fetch_open_orders(SPOT), lambda r: f"{len(r)} open")
    await c.run("fetch_open_orders perp", lambda: perp.fetch_open_orders(PERP), lambda r: f"{len(r)} open")
    if order:
        await c.run("cancel_order spot", lambda: spot.cancel_order(order["id"], SPOT), lambda r: r["status"])
    if porder:
        await c.run("cancel_order perp", lambda: perp.cancel_order(porder["id"], PERP), lambda r: r["status"])
    await c.run("fetch_positions", lambda: perp.fetch_positions([PERP]), lambda r: f"{len(r)} positions")
    await c.run("fetch_funding_history", lambda: perp.fetch_funding_history(PERP), lambda r: f"{len(r)} payments")
    await c.run("watch_ticker spot", lambda: spot.watch_ticker(SPOT), lambda r: f"last {r['last']}")
    await c.run(
        "watch_trades spot", lambda: spot.watch_trades(SPOT), lambda r: f"{len(r)} trades, last {r[-1]['price']}"
    )
    # --- what issue 17 adds ---
    await c.run("watch_order_book perp", lambda: perp.watch_order_book(PERP), lambda r: f"bid {r['bids'][0][0]}")
    await c.run("fetch_tickers spot", lambda: spot.fetch_tickers([SPOT, "BTC/USDT"]), lambda r: f"{len(r)} tickers")
    await c.run("fetch_bids_asks perp", lambda: perp.fetch_bids_asks([PERP]), lambda r: f"{len(r)} tops")
    await c.run("fetch_trades perp", lambda: perp.fetch_trades(PERP, limit=20), lambda r: f"{len(r)} trades")
    await c.run(
        "fetch_index_ohlcv perp",
        lambda: perp.fetch_index_ohlcv(PERP, "1m", limit=10),
        lambda r: f"{len(r)} candles, close {r[-1][4]}",
    )
    await c.run("fetch_status", spot.fetch_status, lambda r: r["status"])
    await c.run(
        "fetch_leverage perp", lambda: perp.fetch_leverage(PERP), lambda r: f"{r['longLeverage']}x {r['marginMode']}"
    )
    await c.run("fetch_funding_rates", perp.fetch_funding_rates, lambda r: f"{len(r)} perps")
    await c.run("fetch_funding_interval", lambda: perp.fetch_funding_interval(PERP), lambda r: str(r["interval"]))
    await c.run("fetch_last_prices perp", lambda: perp.fetch_last_prices([PERP]), lambda r: f"{len(r)} prices")
    await c.run("fetch_trading_fees perp", perp.fetch_trading_fees, lambda r: f"{len(r)} perps")
    await c.run(
        "fetch_premium_index_ohlcv",
        lambda: perp.fetch_premium_index_ohlcv(PERP, "1m", limit=10),
        lambda r: f"{len(r)} candles, close {r[-1][4]}",
    )
    await c.run(
        "fetch_open_interest", lambda: perp.fetch_open_interest(PERP), lambda r: f"{r['openInterestAmount']} contracts"
    )
    await c.run(
        "fetch_funding_rate_history",
        lambda: perp.fetch_funding_rate_history(PERP, limit=5),
        lambda r: f"{len(r)} rates",
    )
    await c.run("fetch_position_mode", lambda: perp.fetch_position_mode(PERP), lambda r: f"hedged {r['hedged']}")
    await c.run("fetch_ledger perp", lambda: perp.fetch_ledger("USDT"), lambda r: f"{len(r)} entries")
    await c.run("transfer futures->spot", lambda: spot.transfer("USDT", 50, "swap", "spot"), lambda r: f"id {r['id']}")
    await c.run("watch_ticker perp", lambda: perp.watch_ticker(PERP), lambda r: f"last {r['last']}")
    await c.run("watch_trades perp", lambda: perp.watch_trades(PERP), lambda r: f"{len(r)} trades")
    await c.run("watch_ohlcv spot 1m", lambda: spot.watch_ohlcv(SPOT, "1m"), lambda r: f"{len(r)} candles")
    await c.run("watch_bids_asks perp", lambda: perp.watch_bids_asks([PERP]), lambda r: f"{len(r)} tops")
    await c.run("watch_mark_price perp", lambda: perp.watch_mark_price(PERP), lambda r: f"mark {r['markPrice']}")
    await c.run(
        "watch_balance spot (transfer)", lambda: _balance_after_transfer(spot), lambda r: f"USDT {r['USDT']['free']}"
    )


async def _margin_mode(perp: Any) -> Any:
    await perp.set_margin_mode("isolated", PERP)
    return await perp.set_margin_mode("cross", PERP)


async def _balance_after_transfer(spot: Any) -> Any:
    """watch_balance resolves on the next balance event: keep moving 1 USDT until one arrives."""
    spot.options["watchBalance"]["fetchBalanceSnapshot"] = True  # balanceUpdate is a delta: start from the REST view
    watching = asyncio.ensure_future(spot.watch_balance())
    try:
        while not watching.done():
            await spot.transfer("USDT", 1, "swap", "spot")
            await asyncio.wait({watching}, timeout=0.5)
        return watching.result()
    finally:
        watching.cancel()


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8765", help="the emulator's plain HTTP address")
    args = parser.parse_args()
    results = asyncio.run(main(args.url))
    ok = sum(1 for _, good, _ in results if good)
    issue_ok = sum(1 for _, good, _ in results[:ISSUE_CALLS] if good)
    print(f"{issue_ok}/{ISSUE_CALLS} of the issue's calls worked; {ok}/{len(results)} calls in all")
    return 0 if ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(cli())
