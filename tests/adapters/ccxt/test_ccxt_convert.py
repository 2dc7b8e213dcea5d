"""The ccxt boundary's translations in isolation: error taxonomy, URL-based error tables, secret scrubbing,
the fee ledger, the request budget, order/market conversion, and config validation."""

from __future__ import annotations

import logging
from decimal import Decimal
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
    market_from_ccxt,
    market_type_of_url,
    order_update,
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
