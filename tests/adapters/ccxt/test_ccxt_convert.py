"""The ccxt boundary's translations in isolation: error taxonomy, URL-based error tables, secret scrubbing,
the fee ledger, the request budget, order/market conversion, and config validation."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from legguard.adapters.ccxt._convert import (
    EXCEPTION_OVERRIDES,
    FeeLedger,
    Redactor,
    ReduceOnlyRejected,
    TradeFee,
    WeightBudget,
    dec,
    lean_order_update,
    market_from_ccxt,
    market_type_of_url,
    order_update,
    report_trade_fee,
    scrub,
    translate_error,
)
from legguard.adapters.ccxt._venue import CcxtVenueConfig, _PerpExchange, _SpotExchange
from legguard.domain import (
    AuthenticationFailed,
    DuplicateOrder,
    MalformedResponse,
    Market,
    MarketKind,
    OrderNotFound,
    OrderOrigin,
    OrderRejected,
    OrderStatus,
    OutcomeUnknown,
    RateLimited,
    RejectReason,
    Side,
    VenueError,
)

SECRETS = ("the-api-key-0123456789", "the-secret-9876543210")


def translated(exc: BaseException, *, placing: bool, post_only: bool = False) -> Any:
    return translate_error(exc, what="op", secrets=SECRETS, client_order_id="c1", placing=placing,
                           post_only=post_only)  # fmt: skip


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "placing_result", "other_result"),
    [
        (ccxt.OrderImmediatelyFillable("x"), RejectReason.POST_ONLY_CROSS, RejectReason.POST_ONLY_CROSS),
        (ccxt.InsufficientFunds("x"), RejectReason.INSUFFICIENT_FUNDS, VenueError),
        (ReduceOnlyRejected("x"), RejectReason.REDUCE_ONLY_REJECTED, RejectReason.REDUCE_ONLY_REJECTED),
        (ccxt.InvalidOrder("x"), RejectReason.INVALID_ORDER, VenueError),
        (ccxt.BadRequest("x"), RejectReason.INVALID_ORDER, VenueError),
        (ccxt.BadSymbol("x"), RejectReason.INVALID_ORDER, VenueError),
        (ccxt.InvalidNonce("x"), RejectReason.OTHER, VenueError),
        (ccxt.ExchangeError("x"), RejectReason.OTHER, VenueError),
        (ccxt.OrderNotFound("x"), RejectReason.OTHER, OrderNotFound),
        (ccxt.DuplicateOrderId("x"), DuplicateOrder, DuplicateOrder),
        (ccxt.RateLimitExceeded("x"), RateLimited, RateLimited),
        (ccxt.DDoSProtection("x"), RateLimited, RateLimited),
        (ccxt.AuthenticationError("x"), AuthenticationFailed, AuthenticationFailed),
        (ccxt.PermissionDenied("x"), AuthenticationFailed, AuthenticationFailed),
        (ccxt.NetworkError("x"), OutcomeUnknown, OutcomeUnknown),
        (ccxt.RequestTimeout("x"), OutcomeUnknown, OutcomeUnknown),
        (ccxt.ExchangeNotAvailable("x"), OutcomeUnknown, OutcomeUnknown),
        (ccxt.OnMaintenance("x"), OutcomeUnknown, OutcomeUnknown),
        (ccxt.OperationFailed("x"), OutcomeUnknown, OutcomeUnknown),
        (ccxt.BadResponse("x"), MalformedResponse, MalformedResponse),
        (ccxt.NullResponse("x"), MalformedResponse, MalformedResponse),
        (TypeError("'NoneType' object is not subscriptable"), MalformedResponse, MalformedResponse),
    ],
)
def test_ccxt_exceptions_map_onto_the_venue_taxonomy(exc: Exception, placing_result: Any, other_result: Any) -> None:
    for placing, expected in ((True, placing_result), (False, other_result)):
        error = translated(exc, placing=placing)
        if isinstance(expected, RejectReason):
            assert isinstance(error, OrderRejected) and error.reason is expected, (placing, error)
        else:
            assert type(error) is expected, (placing, error)


def test_order_not_fillable_is_a_post_only_cross_only_for_post_only_orders() -> None:
    exc = ccxt.OrderNotFillable('binanceusdm {"code":-5022}')
    assert translated(exc, placing=True, post_only=True).reason is RejectReason.POST_ONLY_CROSS
    assert translated(exc, placing=True, post_only=False).reason is RejectReason.OTHER


def test_a_network_failure_never_becomes_a_reject() -> None:
    # The order may exist: anything the engine would treat as "definitely not placed" is a bug here.
    for cls in (ccxt.NetworkError, ccxt.RequestTimeout, ccxt.ExchangeNotAvailable, ccxt.BadResponse):
        assert not isinstance(translated(cls("x"), placing=True), OrderRejected)


def test_error_texts_are_scrubbed() -> None:
    exc = ccxt.ExchangeNotAvailable(
        f"binance GET http://x/api/v3/order?symbol=ETHUSDT&signature=abcdef0123 503 {SECRETS[0]} {SECRETS[1]}"
    )
    text = str(translated(exc, placing=False))
    assert SECRETS[0] not in text and SECRETS[1] not in text and "abcdef0123" not in text
    assert "signature=***" in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:5/fapi/v1/order", "linear"),
        ("http://127.0.0.1:5/fapi/v1/order?symbol=X", "linear"),
        ("http://127.0.0.1:5/fapi/v3/positionRisk", "linear"),
        ("http://127.0.0.1:5/api/v3/order", "spot"),
        ("http://127.0.0.1:5/sapi/v1/asset", "spot"),
        ("http://127.0.0.1:5/dapi/v1/order", "inverse"),
        ("http://elsewhere/fapi/v1/order", None),
        ("http://127.0.0.1:5/fapi/v1order", None),
    ],
)
def test_error_table_is_chosen_by_the_configured_api_group(url: str, expected: str | None) -> None:
    api = {
        "public": "http://127.0.0.1:5/api/v3",
        "sapi": "http://127.0.0.1:5/sapi/v1",
        "fapiPrivate": "http://127.0.0.1:5/fapi/v1",
        "fapiPrivateV3": "http://127.0.0.1:5/fapi/v3",
        "dapiPrivate": "http://127.0.0.1:5/dapi/v1",
        "ws": {"spot": "ws://127.0.0.1:5/stream"},
    }
    assert market_type_of_url(api, url) == expected


def test_ccxt_itself_classifies_futures_codes_against_a_non_binance_url() -> None:
    ex = _PerpExchange({"exceptions": EXCEPTION_OVERRIDES})
    ex.urls["api"] = {"fapiPrivate": "http://127.0.0.1:5/fapi/v1", "public": "http://127.0.0.1:5/api/v3"}
    url = "http://127.0.0.1:5/fapi/v1/order"

    def raised(code: int, msg: str) -> type[BaseException]:
        body = f'{{"code":{code},"msg":"{msg}"}}'
        with pytest.raises(ccxt.BaseError) as info:
            ex.handle_errors(400, "Bad Request", url, "POST", {}, body, {"code": code, "msg": msg}, {}, "")
        return type(info.value)

    assert raised(-5022, "Due to the order could not be executed as maker") is ccxt.OrderNotFillable
    assert raised(-2019, "Margin is insufficient.") is ccxt.InsufficientFunds
    assert raised(-4116, "ClientOrderId is duplicated.") is ccxt.DuplicateOrderId
    assert raised(-2022, "ReduceOnly Order is rejected.") is ReduceOnlyRejected
    spot = _SpotExchange({"exceptions": EXCEPTION_OVERRIDES})
    spot.urls["api"] = {"private": "http://127.0.0.1:5/api/v3"}
    with pytest.raises(ccxt.DuplicateOrderId):
        spot.handle_errors(400, "", "http://127.0.0.1:5/api/v3/order", "POST", {}, "", {"code": -2010,
                           "msg": "Duplicate order sent."}, {}, "")  # fmt: skip


def test_redactor_masks_credentials_in_ccxt_log_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("legguard.tests.redactor")
    redactor = Redactor()
    redactor.secrets.update(SECRETS)
    logger.addFilter(redactor)
    try:
        with caplog.at_level(logging.DEBUG, logger=logger.name):
            logger.debug("%s %s, Request: %s %s", "POST", "http://x", {"X-MBX-APIKEY": SECRETS[0]}, SECRETS[1])
    finally:
        logger.removeFilter(redactor)
    (record,) = caplog.records
    assert "X-MBX-APIKEY" in record.getMessage()
    assert all(s not in record.getMessage() for s in SECRETS)


def test_scrub_masks_listen_keys_and_cuts_long_texts() -> None:
    text = scrub("ws://h/fstream/private/ws?listenKey=" + "A" * 64 + " " + "x" * 1000, ())
    assert "A" * 20 not in text and "listenKey=***" in text and len(text) <= 400


# --- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_key", ""),
        ("secret", "  "),
        ("timeout", 0),
        ("timeout", float("nan")),
        ("budget_burst", -1),
        ("budget_reserve", 1000.0),
        ("book_depth", 0),
        ("urls", {"kraken": {}}),
        ("close_grace", -1),
    ],
)
def test_config_errors_name_the_field(field: str, value: Any) -> None:
    settings: dict[str, Any] = {"api_key": "k" * 8, "secret": "s" * 8, field: value}
    with pytest.raises(ValueError, match=field.split("_")[0]):
        CcxtVenueConfig(**settings)


def test_config_repr_masks_credentials() -> None:
    config = CcxtVenueConfig(*SECRETS)
    for text in (repr(config), str(config), f"{config}", repr([config])):
        assert SECRETS[0] not in text and SECRETS[1] not in text


# --- numbers, markets, orders -------------------------------------------------------------------------


# Up to 15 significant digits, which a float carries exactly through repr (Binance: 8 decimals under 10^7).
@given(st.decimals(allow_nan=False, allow_infinity=False, places=8, min_value=-(10**7) + 1, max_value=10**7 - 1))
def test_dec_reads_floats_and_strings_to_the_same_decimal(value: Decimal) -> None:
    assert dec(str(value), "v") == value
    assert dec(float(str(value)), "v") == value  # ccxt hands out floats of short decimal strings


async def test_quantities_come_from_the_venue_strings_not_ccxt_floats() -> None:
    # 16 significant digits do not survive a float; Binance's own strings are used when present.
    order = {**ws_trade("c1", 1, "0.1", "0", "ETH", "0.1"), "info": {"q": "12345678.12345678", "z": "0.00000001"}}
    update = order_update(order, MARKETS, FeeLedger())
    assert (update.amount, update.filled) == (Decimal("12345678.12345678"), Decimal("0.00000001"))


@pytest.mark.parametrize("bad", [None, "abc", float("nan"), float("inf"), True])
def test_dec_refuses_non_numbers_naming_the_field(bad: object) -> None:
    with pytest.raises(MalformedResponse, match="order x filled"):
        dec(bad, "order x filled")


SPOT_CCXT_MARKET = {
    "id": "ETHUSDT",
    "symbol": "ETH/USDT",
    "base": "ETH",
    "quote": "USDT",
    "spot": True,
    "precision": {"amount": 0.0001, "price": 0.01},
    "limits": {"amount": {"min": 0.0001}, "cost": {"min": 5.0}},
    "maker": 0.001,
    "taker": 0.001,
}


def test_market_from_ccxt_uses_tick_sizes_and_limits() -> None:
    m = market_from_ccxt(SPOT_CCXT_MARKET, tick_size_mode=True)
    assert m == Market("ETH/USDT", "ETHUSDT", MarketKind.SPOT, "ETH", "USDT", Decimal("0.01"), Decimal("0.0001"),
                       Decimal("0.0001"), Decimal(5), Decimal("0.001"), Decimal("0.001"))  # fmt: skip
    digits = market_from_ccxt({**SPOT_CCXT_MARKET, "precision": {"amount": 4, "price": 2}}, tick_size_mode=False)
    assert (digits.tick_size, digits.step_size) == (Decimal("0.01"), Decimal("0.0001"))


MARKETS = {"ETH/USDT": market_from_ccxt(SPOT_CCXT_MARKET, tick_size_mode=True)}


def ws_trade(cid: str, trade_id: int, last: str, fee: str, asset: str, filled: str) -> dict[str, Any]:
    """A ccxt.pro order as parsed from one spot executionReport of a trade."""
    return {
        "symbol": "ETH/USDT",
        "clientOrderId": cid,
        "id": "7",
        "side": "buy",
        "status": "open",
        "amount": 0.3,
        "filled": float(filled),
        "average": 2000.0,
        "fee": {"cost": fee, "currency": asset},
        "info": {"x": "TRADE", "t": trade_id, "l": last, "n": fee, "N": asset},
    }


async def test_stream_fees_accumulate_per_trade_and_repeats_count_once() -> None:
    fees = FeeLedger()
    order_update(ws_trade("c1", 1, "0.1", "0.0001", "ETH", "0.1"), MARKETS, fees)
    order_update(ws_trade("c1", 1, "0.1", "0.0001", "ETH", "0.1"), MARKETS, fees)  # the same trade again
    update = order_update(ws_trade("c1", 2, "0.2", "0.0002", "ETH", "0.3"), MARKETS, fees)
    assert (update.filled, update.fee_base, update.fee_quote) == (Decimal("0.3"), Decimal("0.0003"), 0)
    bnb = order_update(ws_trade("c2", 3, "0.3", "0.00001", "BNB", "0.3"), MARKETS, fees)
    assert (bnb.fee_base, bnb.fee_quote) == (0, 0)  # neither leg's asset: holdings unchanged


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["ETH", "USDT"])), min_size=1, max_size=30))
def test_fee_totals_do_not_depend_on_order_or_repeats(reports: list[tuple[int, str]]) -> None:
    def trade(i: int, asset: str) -> TradeFee:
        return TradeFee(Decimal("0.01"), Decimal(i + 1) / 1000, asset)

    forward, backward = FeeLedger(), FeeLedger()
    latest = {i: a for i, a in reports}  # a repeated trade id keeps its last report
    for i, asset in reports:
        forward.add(("ETH/USDT", "c"), str(i), trade(i, asset))
    for i, asset in latest.items():
        backward.add(("ETH/USDT", "c"), str(i), trade(i, asset))
    assert forward.totals(("ETH/USDT", "c"), "ETH", "USDT") == backward.totals(("ETH/USDT", "c"), "ETH", "USDT")


def test_order_update_names_what_is_missing() -> None:
    good = ws_trade("c1", 1, "0.1", "0", "ETH", "0.1")
    with pytest.raises(MalformedResponse, match="unknown status"):
        order_update({**good, "status": "weird"}, MARKETS, FeeLedger())
    with pytest.raises(MalformedResponse, match="client order id"):
        order_update({**good, "clientOrderId": None}, MARKETS, FeeLedger())
    with pytest.raises(MalformedResponse, match="unknown symbol"):
        order_update({**good, "symbol": "XRP/USDT"}, MARKETS, FeeLedger())
    with pytest.raises(MalformedResponse, match="amount"):
        order_update({**good, "amount": None}, MARKETS, FeeLedger())


@pytest.mark.parametrize(
    ("cid", "origin"),
    [("lgab12000001-SE1", OrderOrigin.OURS), ("autoclose-1700000000", OrderOrigin.LIQUIDATION),
     ("adl_autoclose", OrderOrigin.ADL), ("adl_autoclose-3", OrderOrigin.ADL)],
)  # fmt: skip
async def test_order_origin_from_binance_client_ids(cid: str, origin: OrderOrigin) -> None:
    update = order_update(ws_trade(cid, 1, "0.1", "0", "ETH", "0.1"), MARKETS, FeeLedger())
    assert update.origin is origin and update.side is Side.BUY and update.status is OrderStatus.OPEN


# --- the budget ---------------------------------------------------------------------------------------


async def test_budget_refuses_instead_of_waiting_and_keeps_a_reserve_for_risk_reduction(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = WeightBudget(rate_per_second=20.0, burst=10.0, reserve=4.0)
    for _ in range(6):
        budget.take(1.0, reducing=False, what="entry")
    with pytest.raises(RateLimited) as info:
        budget.take(1.0, reducing=False, what="entry")  # would dip into the reserve
    assert info.value.retry_after == pytest.approx(1.0 / 20.0)
    for _ in range(4):
        budget.take(1.0, reducing=True, what="cancel")  # risk reduction may use it
    with pytest.raises(RateLimited):
        budget.take(1.0, reducing=True, what="cancel")

    await trio.sleep(0.25)  # refill 5 units
    budget.take(1.0, reducing=False, what="entry")
    budget.exhaust()
    with pytest.raises(RateLimited):
        budget.take(0.1, reducing=True, what="cancel")
    await trio.sleep(10.0)
    assert budget.tokens <= budget.burst
    budget.take(6.0, reducing=False, what="entry")  # back to a full burst, never more
    with pytest.raises(RateLimited):
        budget.take(0.5, reducing=False, what="entry")


async def test_the_deadmans_share_is_spent_by_nothing_else_and_the_switch_is_never_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = WeightBudget(rate_per_second=20.0, burst=100.0, reserve=20.0, deadman=20.0)
    for _ in range(15):
        budget.take(4.0, reducing=False, what="entry")  # 60 units: entries stop above both shares
    with pytest.raises(RateLimited):
        budget.take(4.0, reducing=False, what="entry")
    for _ in range(20):
        budget.take(1.0, reducing=True, what="query")  # risk reduction stops above the dead-man's share
    with pytest.raises(RateLimited):
        budget.take(1.0, reducing=True, what="cancel")
    assert budget.tokens == 20.0
    budget.take(10.0, reducing=True, what="countdownCancelAll", priority=True)
    budget.take(10.0, reducing=True, what="countdownCancelAll", priority=True)
    budget.exhaust()  # even after the venue said 429, the switch goes (into debt, which the others wait out)
    budget.take(10.0, reducing=True, what="countdownCancelAll", priority=True)
    assert budget.tokens == -10.0
    with pytest.raises(RateLimited) as info:
        budget.take(1.0, reducing=True, what="cancel")
    assert info.value.retry_after == pytest.approx((1.0 + 20.0 + 10.0) / 20.0)
    with pytest.raises(ValueError, match="deadman"):
        WeightBudget(rate_per_second=20.0, burst=10.0, reserve=5.0, deadman=5.0)


# --- the lean decode of order answers -----------------------------------------------------------------

RECORDED = Path("/work/shared/fixtures/binance-recorded")
_SPOT_EX, _PERP_EX = _SpotExchange({}), _PerpExchange({})
LEAN_SPOT = _SPOT_EX.safe_market_structure(
    {"id": "BTCUSDT", "symbol": "BTC/USDT", "base": "BTC", "quote": "USDT", "spot": True, "type": "spot",
     "precision": {"amount": 0.00001, "price": 0.01}, "limits": {"amount": {"min": 0.00001}, "cost": {"min": 5.0}},
     "maker": 0.001, "taker": 0.001}
)  # fmt: skip
LEAN_PERP = _PERP_EX.safe_market_structure(
    {"id": "BTCUSDT", "symbol": "BTC/USDT:USDT", "base": "BTC", "quote": "USDT", "settle": "USDT", "swap": True,
     "contract": True, "linear": True, "inverse": False, "contractSize": 1.0, "type": "swap",
     "precision": {"amount": 0.001, "price": 0.1}, "limits": {"amount": {"min": 0.001}, "cost": {"min": 5.0}},
     "maker": 0.0002, "taker": 0.0004}
)  # fmt: skip
LEAN_MARKETS = {m["symbol"]: market_from_ccxt(m, tick_size_mode=True) for m in (LEAN_SPOT, LEAN_PERP)}

# Binance's own documentation examples of spot answers (POST /api/v3/order FULL, DELETE /api/v3/order).
SPOT_FULL = {
    "symbol": "BTCUSDT", "orderId": 28, "orderListId": -1, "clientOrderId": "6gCrw2kRUAF9CvJDGP16IP",
    "transactTime": 1507725176595, "price": "0.00000000", "origQty": "10.00000000", "executedQty": "10.00000000",
    "cummulativeQuoteQty": "10.00000000", "status": "FILLED", "timeInForce": "GTC", "type": "MARKET", "side": "SELL",
    "workingTime": 1507725176595, "selfTradePreventionMode": "NONE",
    "fills": [
        {"price": "4000.00000000", "qty": "1.00000000", "commission": "4.00000000", "commissionAsset": "USDT",
         "tradeId": 56},
        {"price": "3999.00000000", "qty": "5.00000000", "commission": "19.99500000", "commissionAsset": "USDT",
         "tradeId": 57},
        {"price": "3998.00000000", "qty": "2.00000000", "commission": "7.99600000", "commissionAsset": "USDT",
         "tradeId": 58},
        {"price": "3997.00000000", "qty": "1.00000000", "commission": "3.99700000", "commissionAsset": "USDT",
         "tradeId": 59},
        {"price": "3995.00000000", "qty": "1.00000000", "commission": "3.99500000", "commissionAsset": "USDT",
         "tradeId": 60},
    ],
}  # fmt: skip
SPOT_CANCEL = {
    "symbol": "BTCUSDT", "origClientOrderId": "myOrder1", "orderId": 4, "orderListId": -1,
    "clientOrderId": "cancelMyOrder1", "transactTime": 1684804350068, "price": "2.00000000", "origQty": "1.00000000",
    "executedQty": "0.00000000", "cummulativeQuoteQty": "0.00000000", "status": "CANCELED", "timeInForce": "GTC",
    "type": "LIMIT", "side": "BUY", "selfTradePreventionMode": "NONE",
}  # fmt: skip


def ccxt_decoded(ex: Any, raw: dict[str, Any], market: dict[str, Any], fees: FeeLedger, cid: str | None) -> Any:
    """What the venue made of an order answer before the lean decode: ccxt's `parse_order`, then
    `order_update` (a spot cancel's answer read about the order asked for, as `CcxtVenue._update` does)."""
    order = ex.parse_order(raw, market)
    if cid is not None:
        order = {**order, "clientOrderId": cid}
    return order_update(order, LEAN_MARKETS, fees, symbol=market["symbol"], client_order_id=cid)


def assert_lean_equals_ccxt(ex: Any, raw: dict[str, Any], market: dict[str, Any], cid: str | None = None) -> None:
    lean_fees, ccxt_fees = FeeLedger(), FeeLedger()
    lean = lean_order_update(ex, copy.deepcopy(raw), market, LEAN_MARKETS, lean_fees, client_order_id=cid,
                             side=None)  # fmt: skip
    assert lean is not None, "the lean decode refused a plain order answer"
    expected = ccxt_decoded(ex, copy.deepcopy(raw), market, ccxt_fees, cid)
    assert dataclasses.replace(lean, timestamp=0) == dataclasses.replace(expected, timestamp=0)
    # Equal as journaled too: the same digits, not only the same values.
    assert repr(dataclasses.replace(lean, timestamp=0)) == repr(dataclasses.replace(expected, timestamp=0))
    key = (market["symbol"], lean.client_order_id)
    assert lean_fees.totals(key, "BTC", "USDT") == ccxt_fees.totals(key, "BTC", "USDT")


@pytest.mark.skipif(not RECORDED.exists(), reason="recorded Binance fixtures not available")
async def test_lean_decode_equals_ccxt_on_the_recorded_futures_orders() -> None:
    orders = json.loads((RECORDED / "http" / "http_futures_account_orders.json").read_text())
    for raw in orders:
        assert_lean_equals_ccxt(_PERP_EX, raw, LEAN_PERP)
        filled = {**raw, "status": "PARTIALLY_FILLED", "executedQty": "0.15", "cumQuote": "1395.15"}
        assert_lean_equals_ccxt(_PERP_EX, filled, LEAN_PERP)  # average from cumQuote / executedQty
        assert_lean_equals_ccxt(_PERP_EX, {**filled, "avgPrice": "9301.00000"}, LEAN_PERP)  # the venue's own


async def test_lean_decode_equals_ccxt_on_binances_documented_spot_answers() -> None:
    assert_lean_equals_ccxt(_SPOT_EX, SPOT_FULL, LEAN_SPOT)  # fills: fees in the ledger, average from cost
    assert_lean_equals_ccxt(_SPOT_EX, {**SPOT_FULL, "side": "BUY"}, LEAN_SPOT)
    assert_lean_equals_ccxt(_SPOT_EX, SPOT_CANCEL, LEAN_SPOT, cid="myOrder1")
    partial = {**SPOT_CANCEL, "executedQty": "0.30000000", "cummulativeQuoteQty": "0.60000000"}
    assert_lean_equals_ccxt(_SPOT_EX, partial, LEAN_SPOT, cid="myOrder1")
    for status in ("NEW", "PARTIALLY_FILLED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED", "PENDING_CANCEL"):
        assert_lean_equals_ccxt(_SPOT_EX, {**partial, "status": status}, LEAN_SPOT, cid="myOrder1")


@pytest.mark.parametrize(
    "change",
    [
        {"code": -2011, "msg": "Unknown order sent."},  # an error body: ccxt's handle_errors territory
        {"status": "SOMETHING_NEW"},  # a status ccxt passes through unmapped
        {"executedQty": 0.3},  # a number where Binance sends a string
        {"origQty": None},
        {"symbol": "ETHUSDT"},  # another market than the one asked about
        {"fills": [{"qty": "1", "commission": "0.1", "commissionAsset": "USDT"}]},  # a fill without its id
        {"fills": "none"},
        {"cummulativeQuoteQty": None},
    ],
)
async def test_lean_decode_leaves_any_other_shape_to_ccxt(change: dict[str, Any]) -> None:
    raw = {k: v for k, v in {**SPOT_FULL, **change}.items() if v is not None}
    assert lean_order_update(_SPOT_EX, raw, LEAN_SPOT, LEAN_MARKETS, FeeLedger(), client_order_id=None,
                             side=None) is None  # fmt: skip


@pytest.mark.skipif(not RECORDED.exists(), reason="recorded Binance fixtures not available")
async def test_a_report_read_raw_records_the_trade_as_ccxts_parse_of_it_does() -> None:
    """`report_trade_fee` (an execution report read before ccxt.pro handles it) leaves the fee ledger exactly
    as `order_update(parse_ws_order(report))` does, on every recorded spot executionReport."""
    ex = _SpotExchange({})
    ex.set_markets([{**SPOT_CCXT_MARKET, "type": "spot", "active": True}])
    reports = [json.loads(p.read_text()) for p in sorted((RECORDED / "ws").glob("ws_spot_execution_report_*.json"))]
    assert len(reports) >= 10
    trades = 0
    # Each also with no fee charged but an asset named (ccxt then gives the fee no currency).
    variants = [{**r.get("data", r), **extra} for r in reports for extra in ({}, {"n": "0.00000000", "N": "BNB"})]
    for variant in variants:
        report = {**variant, "s": "ETHUSDT"}
        raw, parsed = FeeLedger(), FeeLedger()
        cid = report.get("c") or "empty"
        trade = report_trade_fee(ex, report)
        if trade is not None:
            raw.add(("ETH/USDT", cid), *trade)
            trades += 1
        order_update({**ex.parse_ws_order(report), "clientOrderId": cid}, MARKETS, parsed)
        assert raw._orders == parsed._orders, report
    assert trades >= 6  # trades with a fee, without one (l = 0), and calculated ones are among them
