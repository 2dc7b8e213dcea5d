"""The L2 matching engine shared by the simulated venue and the Binance-wire emulator: the other
participants' aggregated liquidity, our orders resting on top of it with price-time priority, and the spot
and perp accounts they move, fees included. Synchronous and clock-free: every state change takes `now`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from legguard.domain import (
    ZERO,
    Balance,
    BookSnapshot,
    DuplicateOrder,
    MarginAccount,
    Market,
    MarketKind,
    OrderNotFound,
    OrderOrigin,
    OrderRejected,
    OrderRequest,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RejectReason,
    Side,
)

FEE_QUANTUM = Decimal("0.00000001")  # Binance reports commissions with 8 decimals

SPOT_MAKER_FEE = Decimal("0.00075")
SPOT_TAKER_FEE = Decimal("0.001")
PERP_MAKER_FEE = Decimal("0.0002")
PERP_TAKER_FEE = Decimal("0.0005")

# Binance's own error texts, so the wire emulator can pass them through unchanged.
# Binance USDⓈ-M tier-1 maintenance margin rate (the emulator's brackets start there too).
MAINT_MARGIN_RATE = Decimal("0.004")
PERP_WALLET_ASSET = "USDT"  # the USDⓈ-M wallet's margin asset
MSG_MARGIN = "Margin is insufficient."
MSG_BALANCE = "Account has insufficient balance for requested action."
MSG_POST_ONLY = "Order would immediately match and take."
MSG_REDUCE_ONLY = "ReduceOnly Order is rejected."
MSG_UNKNOWN_ORDER = "Unknown order sent."

DEFAULT_BALANCES: Mapping[str, Decimal] = {"USDT": Decimal(1_000_000), "ETH": Decimal(100), "BTC": Decimal(10)}


def default_markets() -> dict[str, Market]:
    """ETH and BTC against USDT, spot and USDⓈ-M perpetual.

    Filters are the ones in the recorded exchangeInfo responses
    (fixtures/binance-recorded/http/http_{spot,futures}_market_exchange_info.json; a test holds them equal).
    """

    def spot(base: str, step: str) -> Market:
        return Market(
            symbol=f"{base}/USDT",
            venue_symbol=f"{base}USDT",
            kind=MarketKind.SPOT,
            base=base,
            quote="USDT",
            tick_size=Decimal("0.01"),
            step_size=Decimal(step),
            min_qty=Decimal(step),
            min_notional=Decimal(10),
            maker_fee=SPOT_MAKER_FEE,
            taker_fee=SPOT_TAKER_FEE,
        )

    def perp(base: str, tick: str) -> Market:
        return Market(
            symbol=f"{base}/USDT:USDT",
            venue_symbol=f"{base}USDT",
            kind=MarketKind.LINEAR,
            base=base,
            quote="USDT",
            tick_size=Decimal(tick),
            step_size=Decimal("0.001"),
            min_qty=Decimal("0.001"),
            min_notional=Decimal(10),
            maker_fee=PERP_MAKER_FEE,
            taker_fee=PERP_TAKER_FEE,
        )

    markets = [spot("ETH", "0.0001"), spot("BTC", "0.00001"), perp("ETH", "0.01"), perp("BTC", "0.1")]
    return {m.symbol: m for m in markets}


def fee_for(market: Market, side: Side, price: Decimal, quantity: Decimal, *, maker: bool) -> tuple[Decimal, str]:
    """The commission of one fill and the asset it is charged in.

    A spot BUY pays in the base asset it receives (Binance without BNB discount); everything else pays in
    the quote asset (USDT for the perps).
    """
    rate = market.maker_fee if maker else market.taker_fee
    if market.kind is MarketKind.SPOT and side is Side.BUY:
        return (quantity * rate).quantize(FEE_QUANTUM, ROUND_HALF_UP), market.base
    return (price * quantity * rate).quantize(FEE_QUANTUM, ROUND_HALF_UP), market.quote


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution of one of our orders (for myTrades / userTrades and for tests)."""

    trade_id: int
    client_order_id: str
    venue_order_id: str
    symbol: str
    side: Side
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_asset: str
    maker: bool
    timestamp: float
    realized_pnl: Decimal = ZERO  # perp only: pnl realised by the reducing part of this fill


@dataclass(slots=True, eq=False)
class _Order:
    client_order_id: str
    market: Market
    side: Side
    type: OrderType
    price: Decimal | None
    amount: Decimal
    reduce_only: bool
    origin: OrderOrigin
    venue_order_id: str
    seq: int  # arrival order: time priority within a price level
    timestamp: float
    status: OrderStatus = OrderStatus.OPEN
    filled: Decimal = ZERO
    cost: Decimal = ZERO  # sum of price * quantity over fills
    fee_base: Decimal = ZERO
    fee_quote: Decimal = ZERO
    # Spot only: what this order still holds locked (quote for a buy at its limit price, base for a sell).
    # Invariant: the account's locked balance of an asset == sum of `reserved` of open orders locking it.
    reserved: Decimal = ZERO
    fill_cap: Decimal | None = None  # see MatchingEngine.cap_fills
    # Queue position: others' resting quantity at this order's price that arrived before it (time priority).
    # Invariant (resting orders): 0 <= ahead <= the others' quantity at its price level.
    ahead: Decimal = ZERO

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled

    @property
    def exhausted(self) -> bool:
        """Filled up to its fill cap: still open, but out of the book (it can never trade again)."""
        return self.fill_cap is not None and self.filled >= self.fill_cap

    def snapshot(self) -> OrderUpdate:
        return OrderUpdate(
            client_order_id=self.client_order_id,
            symbol=self.market.symbol,
            side=self.side,
            status=self.status,
            amount=self.amount,
            filled=self.filled,
            average=self.cost / self.filled if self.filled else None,
            fee_base=self.fee_base,
            fee_quote=self.fee_quote,
            origin=self.origin,
            venue_order_id=self.venue_order_id,
            timestamp=self.timestamp,
        )


@dataclass(slots=True)
class _Book:
    market: Market
    # Other participants' aggregated liquidity: price -> quantity (> 0).
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    # Our open limit orders on this symbol, in arrival order.
    resting: list[_Order] = field(default_factory=list)
    sequence: int = 0
    timestamp: float = 0.0
    # Our best resting price per side (None: nothing rests there), kept as orders join the book and recounted
    # only after the order at that price left it or stopped trading (`unrested`): the mid, a post-only
    # check and self-trade prevention ask for it on every order, and a recount walks every resting order.
    # The price object is the one `levels` would show (the first order at that price, in arrival order).
    mine_best: dict[Side, Decimal | None] = field(default_factory=dict)  # a side absent: recount

    def others(self, side: Side) -> dict[Decimal, Decimal]:
        return self.bids if side is Side.BUY else self.asks

    def mine(self, side: Side) -> Decimal | None:
        """The best price of our live resting orders of one side (None: none)."""
        if side in self.mine_best:
            return self.mine_best[side]
        best: Decimal | None = None
        for o in self.resting:
            if o.side is side and not o.exhausted:
                price = _price(o)
                if best is None or (price > best if side is Side.BUY else price < best):
                    best = price
        self.mine_best[side] = best
        return best

    def best(self, side: Side) -> Decimal | None:
        """The best price of one side, others' and ours together: `levels(side)[0][0]`, without building and
        sorting the levels."""
        others = self.bids if side is Side.BUY else self.asks
        mine = self.mine(side)
        if not others:
            return mine
        theirs = max(others) if side is Side.BUY else min(others)
        if mine is None or mine == theirs:
            return theirs  # `levels` keys an equal price by others' level
        return (mine if mine > theirs else theirs) if side is Side.BUY else (mine if mine < theirs else theirs)

    def rested(self, order: _Order) -> None:
        """`order` joined the book (appended to `resting`)."""
        self.resting.append(order)
        side = order.side
        if side in self.mine_best and not order.exhausted:
            price, best = _price(order), self.mine_best[side]
            if best is None or (price > best if side is Side.BUY else price < best):
                self.mine_best[side] = price

    def unrested(self, order: _Order) -> None:
        """`order` left the book or stopped trading (fill cap reached): recount its side's best if it was it."""
        best = self.mine_best.get(order.side)
        if best is not None and _price(order) == best:
            del self.mine_best[order.side]

    def ours(self, side: Side) -> list[_Order]:
        """Our live resting orders of one side in matching priority: best price first, then arrival."""
        orders = [o for o in self.resting if o.side is side and not o.exhausted]
        if side is Side.BUY:
            orders.sort(key=lambda o: (-_price(o), o.seq))
        else:
            orders.sort(key=lambda o: (_price(o), o.seq))
        return orders

    def levels(self, side: Side) -> list[tuple[Decimal, Decimal]]:
        """Others' and our liquidity aggregated per price, best first."""
        agg = dict(self.others(side))
        for o in self.resting:
            if o.side is side and not o.exhausted:
                agg[_price(o)] = agg.get(_price(o), ZERO) + o.remaining
        return sorted(agg.items(), reverse=side is Side.BUY)


def _price(order: _Order) -> Decimal:
    # Only limit orders rest, and a limit order always has a price (OrderRequest enforces it).
    assert order.price is not None
    return order.price


def _crosses(side: Side, limit: Decimal, level: Decimal) -> bool:
    """Would an order of `side` at `limit` trade with opposite liquidity at `level`?"""
    return level <= limit if side is Side.BUY else level >= limit


class MatchingEngine:
    """Price-time priority per symbol for our orders against a replaceable book of others' liquidity.

    Spot: one account of free/locked balances per asset. Perp: one USDT margin wallet (cross margin over all
    perp symbols), a signed position and entry price per symbol, realised pnl on reductions.

    Self-trade prevention follows Binance's EXPIRE_MAKER: a taker order never matches our own resting
    orders; those it would cross are expired first.
    """

    def __init__(
        self,
        markets: Mapping[str, Market] | None = None,
        *,
        balances: Mapping[str, Decimal] | None = None,
        perp_wallet: Decimal = Decimal(1_000_000),
        leverage: int = 5,
    ) -> None:
        if leverage < 1:
            raise ValueError(f"leverage must be >= 1, got {leverage}")
        self.markets: dict[str, Market] = dict(markets if markets is not None else default_markets())
        self.leverage = leverage
        start = DEFAULT_BALANCES if balances is None else balances
        for asset, amount in start.items():
            if amount < 0:
                raise ValueError(f"balances[{asset!r}] must be >= 0, got {amount}")
        self._free: dict[str, Decimal] = {a: Decimal(v) for a, v in start.items()}
        self._locked: dict[str, Decimal] = {a: ZERO for a in self._free}
        self._wallet = Decimal(perp_wallet)
        self._position: dict[str, Decimal] = {s: ZERO for s, m in self.markets.items() if m.kind is MarketKind.LINEAR}
        self._entry: dict[str, Decimal] = {}
        self._books = {s: _Book(m) for s, m in self.markets.items()}
        self._by_id = {(m.venue_symbol, m.kind): m for m in self.markets.values()}
        # (symbol, client order id) -> the latest order with that id. Like Binance, an id is unique only among
        # OPEN orders: once an order is closed its id may be sent again, as a new order.
        self._orders: dict[tuple[str, str], _Order] = {}
        self._every: list[_Order] = []  # every order ever, in placement order (reused ids included)
        self._fills: list[Fill] = []
        # Open non-reduce-only perp limit orders (the margin check's open notional), and the sum of their
        # price x remaining kept as they are placed, fill and close: the check costs O(1), not O(history).
        self._perp_open: dict[_Order, None] = {}
        self._perp_notional = ZERO
        self._queue: list[OrderUpdate] = []
        self._order_ids = itertools.count(1)
        self._trade_ids = itertools.count(1)
        self._seq = itertools.count()
        self._autoclose_ids = itertools.count(1)

    # --- lookups ------------------------------------------------------------------------------------

    def market_by_id(self, venue_symbol: str, kind: MarketKind) -> Market:
        try:
            return self._by_id[(venue_symbol, kind)]
        except KeyError:
            raise KeyError(f"no {kind} market with venue symbol {venue_symbol!r}") from None

    def _book(self, symbol: str) -> _Book:
        try:
            return self._books[symbol]
        except KeyError:
            raise ValueError(f"symbol {symbol!r} is not a market of this engine: {sorted(self._books)}") from None

    # --- the rest of the market -------------------------------------------------------------------------

    def set_book(
        self,
        symbol: str,
        bids: Sequence[tuple[Decimal, Decimal]],
        asks: Sequence[tuple[Decimal, Decimal]],
        now: float,
    ) -> list[OrderUpdate]:
        """Replace the other participants' liquidity; fill our resting orders the new book crosses."""
        book = self._book(symbol)
        new_bids, new_asks = _levels("bids", bids), _levels("asks", asks)
        if new_bids and new_asks and max(new_bids) >= min(new_asks):
            raise ValueError(f"set_book({symbol}): crossed book, best bid {max(new_bids)} >= best ask {min(new_asks)}")
        mark = len(self._queue)
        book.bids, book.asks = new_bids, new_asks
        book.sequence += 1
        book.timestamp = now
        # A new level at or through our price is someone trading with us: we are the maker, at our price.
        for side in (Side.BUY, Side.SELL):
            opposite = book.others(side.opposite)
            mine = book.mine(side)
            if mine is None or not opposite:
                continue
            if not _crosses(side, mine, min(opposite) if side is Side.BUY else max(opposite)):
                continue  # others' best level does not reach even our best order: it reaches none
            # Sorted once: fills only remove levels (skipped below), they never add one.
            levels = sorted(opposite, reverse=side is Side.SELL)
            for order in book.ours(side):
                limit = _price(order)
                for level in levels:
                    if level not in opposite:
                        continue  # taken whole by an earlier order of ours
                    # status: filled up, or expired by an earlier fill (reduce-only with nothing to reduce)
                    if order.status is not OrderStatus.OPEN or not _crosses(side, limit, level):
                        break
                    taken = self._execute(order, min(order.remaining, opposite[level]), limit, True, now)
                    _take(opposite, level, taken)
                    if order.exhausted:
                        break
        # Liquidity that left a level was cancelled, and a queue only shrinks from the front for us: what is
        # ahead of our order can never exceed what is left at its price. New liquidity joins behind us.
        for order in book.resting:
            order.ahead = min(order.ahead, book.others(order.side).get(_price(order), ZERO))
        return self._queue[mark:]

    def trade_through(
        self, symbol: str, aggressor: Side, price: Decimal, quantity: Decimal, now: float
    ) -> list[OrderUpdate]:
        """A print in the wider market: an aggressive SELL at `price` fills our resting BUYs priced >= price
        (best price first, then time priority) up to `quantity`, at our price; symmetric for a BUY."""
        book = self._book(symbol)
        if price <= 0 or quantity <= 0:
            raise ValueError(f"trade_through({symbol}): price and quantity must be > 0, got {price} x {quantity}")
        mark = len(self._queue)
        book.timestamp = now
        left = quantity
        for order in book.ours(aggressor.opposite):
            if left <= 0 or not _crosses(aggressor, price, _price(order)):
                break
            if order.status is not OrderStatus.OPEN:
                continue  # expired by an earlier fill in this loop (reduce-only with nothing left to reduce)
            left -= self._execute(order, min(left, order.remaining), _price(order), True, now)
        return self._queue[mark:]

    def print_trade(
        self, symbol: str, aggressor: Side, price: Decimal, quantity: Decimal, now: float
    ) -> list[OrderUpdate]:
        """Someone else's aggressive order of `quantity` with limit `price` against the resting book, price-time
        priority kept: levels best first down to `price`, and within a level others' volume queued ahead of our
        order trades before it, ours before volume behind it. Others' liquidity it takes leaves the book.

        Unlike `trade_through` (a print aimed at our orders), our order fills only once the volume ahead of it
        has traded. Returns the updates of our orders it filled.
        """
        book = self._book(symbol)
        if price <= 0 or quantity <= 0:
            raise ValueError(f"print_trade({symbol}): price and quantity must be > 0, got {price} x {quantity}")
        mark = len(self._queue)
        book.timestamp = now
        side = aggressor.opposite  # the resting side it trades with
        others = book.others(side)
        mine = book.ours(side)
        levels = sorted({*others, *(_price(o) for o in mine)}, reverse=side is Side.BUY)
        left = quantity
        for level in levels:
            if left <= 0 or not _crosses(aggressor, price, level):
                break
            here = [o for o in mine if _price(o) == level]  # time priority: `ours` keeps arrival order
            available = others.get(level, ZERO)
            consumed = ZERO  # others' volume traded at this level
            for order in here:
                gap = min(order.ahead, available) - consumed
                if gap > 0:
                    took = min(left, gap)
                    consumed += took
                    left -= took
                if left <= 0:
                    break
                if order.status is OrderStatus.OPEN and not order.exhausted:
                    left -= self._execute(order, min(left, order.remaining), level, True, now)
            if left > 0 and available > consumed:
                took = min(left, available - consumed)
                consumed += took
                left -= took
            if consumed:
                _take(others, level, consumed)
                for order in here:
                    order.ahead = max(ZERO, order.ahead - consumed)
        return self._queue[mark:]

    def queue_ahead(self, symbol: str, client_order_id: str) -> Decimal:
        """Others' volume queued ahead of one of our resting orders at its price (tests, diagnostics)."""
        order = self._orders.get((symbol, client_order_id))
        if order is None or order.status is not OrderStatus.OPEN:
            raise OrderNotFound(client_order_id, MSG_UNKNOWN_ORDER)
        return order.ahead

    def book(self, symbol: str, depth: int = 20) -> BookSnapshot:
        """Others' and our resting liquidity aggregated per price level, best first."""
        book = self._book(symbol)
        return BookSnapshot(
            symbol=symbol,
            bids=tuple(book.levels(Side.BUY)[:depth]),
            asks=tuple(book.levels(Side.SELL)[:depth]),
            timestamp=book.timestamp,
            sequence=book.sequence,
        )

    def mid(self, symbol: str) -> Decimal | None:
        book = self._book(symbol)
        bid, ask = book.best(Side.BUY), book.best(Side.SELL)
        if bid is None or ask is None:
            return None
        return (bid + ask) / 2

    def mark_price(self, symbol: str) -> Decimal | None:
        """The price positions are valued and liquidated at: the mid on the tick grid, else the entry."""
        mid = self.mid(symbol)
        if mid is None:
            return self._entry.get(symbol)
        return mid.quantize(self._book(symbol).market.tick_size, ROUND_HALF_UP)

    # --- our orders -------------------------------------------------------------------------------------

    def place(self, request: OrderRequest, now: float) -> OrderUpdate:
        """Validate, then rest a limit order (taking first what it crosses) or walk the book for a market one.

        Queues the acknowledgement (status open, nothing filled) and then one update per fill; returns the
        last of them. Rejections raise and leave no trace (the order never existed).
        """
        cid = request.client_order_id
        market = self.validate(request)
        earlier = self._orders.get((market.symbol, cid))
        if earlier is not None and earlier.status is OrderStatus.OPEN:
            raise DuplicateOrder(cid)
        book = self._books[market.symbol]
        side = request.side
        amount = request.amount

        if request.reduce_only:
            position = self._position[market.symbol]
            reducible = -position if side is Side.BUY else position
            if reducible <= 0:
                raise OrderRejected(cid, RejectReason.REDUCE_ONLY_REJECTED, MSG_REDUCE_ONLY)
            amount = min(amount, reducible)  # Binance clips a reduce-only order to the position

        if request.type is OrderType.LIMIT:
            assert request.price is not None
            limit: Decimal | None = request.price
            if request.post_only:
                best = book.best(side.opposite)
                if best is not None and _crosses(side, request.price, best):
                    raise OrderRejected(cid, RejectReason.POST_ONLY_CROSS, MSG_POST_ONLY)
        else:
            limit = None
        walk = _walk(book.others(side.opposite), side, amount, limit)
        walk_cost = sum((p * q for p, q in walk), ZERO)
        self._check_funds(request, market, amount, walk_cost)

        order = _Order(
            client_order_id=cid,
            market=market,
            side=side,
            type=request.type,
            price=request.price if request.type is OrderType.LIMIT else None,
            amount=amount,
            reduce_only=request.reduce_only,
            origin=OrderOrigin.OURS,
            venue_order_id=str(next(self._order_ids)),
            seq=next(self._seq),
            timestamp=now,
        )
        self._orders[(market.symbol, cid)] = order
        self._every.append(order)
        if market.kind is MarketKind.LINEAR and request.type is OrderType.LIMIT and not request.reduce_only:
            assert request.price is not None
            self._perp_open[order] = None
            self._perp_notional += request.price * amount
        if market.kind is MarketKind.SPOT and request.type is OrderType.LIMIT:
            assert request.price is not None
            asset, reserve = (market.quote, request.price * amount) if side is Side.BUY else (market.base, amount)
            self._move(asset, reserve, to_locked=True)
            order.reserved = reserve
        self._queue.append(order.snapshot())

        # Self-trade prevention: expire our own resting orders this taker would otherwise trade with.
        reach = limit if limit is not None else (walk[-1][0] if walk else None)
        crossed = book.mine(side.opposite)  # our best order there: if it is not crossed, none is
        if reach is not None and crossed is not None and _crosses(side, reach, crossed):
            for mine in book.ours(side.opposite):
                if _crosses(side, reach, _price(mine)):
                    self._finish(mine, OrderStatus.EXPIRED, now)

        opposite = book.others(side.opposite)
        for level, qty in walk:
            if order.status is not OrderStatus.OPEN:
                break
            _take(opposite, level, self._execute(order, qty, level, False, now))
        if order.status is OrderStatus.OPEN:
            if request.type is OrderType.LIMIT and not request.ioc:
                # Joins the back of the queue at its price.
                order.ahead = book.others(side).get(_price(order), ZERO)
                book.rested(order)
            else:
                self._finish(order, OrderStatus.EXPIRED, now)  # the book ran out, or an IOC limit's rest
        book.sequence += 1
        return order.snapshot()

    def validate(self, request: OrderRequest) -> Market:
        """The stateless checks of `place` (symbol, tick, step, min qty, min notional), raising what `place`
        would; returns the order's market. Cheap: for `Venue.arm`."""
        market = self.markets.get(request.symbol)
        if market is None:
            raise OrderRejected(
                request.client_order_id, RejectReason.INVALID_ORDER, f"unknown symbol {request.symbol!r}"
            )
        if request.reduce_only and market.kind is not MarketKind.LINEAR:
            raise OrderRejected(
                request.client_order_id, RejectReason.INVALID_ORDER, "reduce_only is only valid on perp markets"
            )
        self._check_filters(request, market, self._books[market.symbol])
        return market

    def cap_fills(self, symbol: str, client_order_id: str, total: Decimal) -> None:
        """Let an open order fill at most `total` in all, ever (fault injection: a partial fill that never
        completes). Once it has, it stays open (fetchable, cancellable, its reservation held) but leaves the
        book: the market trades through it as if it were not there."""
        order = self._orders.get((symbol, client_order_id))
        if order is None or order.status is not OrderStatus.OPEN:
            raise OrderNotFound(client_order_id, MSG_UNKNOWN_ORDER)
        if total < order.filled:
            raise ValueError(f"cap_fills: total {total} is below what already filled ({order.filled})")
        order.fill_cap = total
        self._books[symbol].mine_best.pop(order.side, None)  # it may stop (or, with a higher cap, resume) trading

    def cancel(self, symbol: str, client_order_id: str, now: float) -> OrderUpdate:
        """OPEN -> CANCELED, keeping what filled. Unknown or already terminal: OrderNotFound (Binance -2011)."""
        order = self._orders.get((symbol, client_order_id))
        if order is None or order.status is not OrderStatus.OPEN:
            raise OrderNotFound(client_order_id, MSG_UNKNOWN_ORDER)
        self._finish(order, OrderStatus.CANCELED, now)
        return order.snapshot()

    def get(self, symbol: str, client_order_id: str) -> OrderUpdate:
        order = self._orders.get((symbol, client_order_id))
        if order is None:
            raise OrderNotFound(client_order_id, f"no order {client_order_id!r} on {symbol}")
        return order.snapshot()

    def open_orders(self, symbol: str | None = None) -> list[OrderUpdate]:
        return [o.snapshot() for o in self._select(symbol) if o.status is OrderStatus.OPEN]

    def all_orders(self, symbol: str | None = None) -> list[OrderUpdate]:
        return [o.snapshot() for o in self._select(symbol)]

    def fills(self, symbol: str | None = None) -> list[Fill]:
        return [f for f in self._fills if symbol is None or f.symbol == symbol]

    def _select(self, symbol: str | None) -> Iterable[_Order]:
        return (o for o in self._every if symbol is None or o.market.symbol == symbol)

    # --- venue-originated actions -----------------------------------------------------------------------

    def liquidate(
        self, symbol: str, quantity: Decimal, now: float, origin: OrderOrigin = OrderOrigin.LIQUIDATION
    ) -> OrderUpdate:
        """The venue closes `quantity` (clipped to |position|) of the perp position at the mark price."""
        book = self._book(symbol)
        market = book.market
        if market.kind is not MarketKind.LINEAR:
            raise ValueError(f"liquidate: {symbol} is not a perp market")
        if origin is OrderOrigin.OURS:
            raise ValueError("liquidate: origin must be LIQUIDATION or ADL")
        position = self._position[symbol]
        if position == 0:
            raise ValueError(f"liquidate: no position on {symbol}")
        if quantity <= 0:
            raise ValueError(f"liquidate: quantity must be > 0, got {quantity}")
        mark = self.mark_price(symbol)
        assert mark is not None  # a position has an entry price
        prefix = "adl_autoclose" if origin is OrderOrigin.ADL else "autoclose"
        order = _Order(
            client_order_id=f"{prefix}-{next(self._autoclose_ids)}",
            market=market,
            side=Side.SELL if position > 0 else Side.BUY,
            type=OrderType.MARKET,
            price=None,
            amount=min(quantity, abs(position)),
            reduce_only=True,
            origin=origin,
            venue_order_id=str(next(self._order_ids)),
            seq=next(self._seq),
            timestamp=now,
        )
        self._orders[(symbol, order.client_order_id)] = order
        self._every.append(order)
        # No acknowledgement: the venue reports a liquidation as one finished order (Binance sends a single
        # FILLED ORDER_TRADE_UPDATE for `autoclose-` orders).
        self._execute(order, order.amount, mark, False, now)
        return order.snapshot()

    # --- accounts -----------------------------------------------------------------------------------

    def balances(self) -> dict[str, Balance]:
        return {a: Balance(free=self._free[a], locked=self._locked[a]) for a in sorted(self._free)}

    def positions(self) -> dict[str, Decimal]:
        return dict(self._position)

    def position_entry_price(self, symbol: str) -> Decimal | None:
        return self._entry.get(symbol)

    def perp_wallet(self) -> Decimal:
        return self._wallet

    def transfer(self, asset: str, amount: Decimal, *, to_perp: bool) -> None:
        """Move quote between the spot account and the USDⓈ-M wallet (Binance's universal transfer).
        Raises ValueError when the source cannot spare `amount` (spot: free balance; perp: available)."""
        if amount <= 0:
            raise ValueError(f"transfer amount must be > 0, got {amount}")
        if asset != PERP_WALLET_ASSET:
            raise ValueError(f"only {PERP_WALLET_ASSET} moves between the wallets, not {asset}")
        if to_perp:
            if self._free.get(asset, ZERO) < amount:
                raise ValueError(f"spot {asset} free {self._free.get(asset, ZERO)} below {amount}")
            self._free[asset] -= amount
            self._wallet += amount
        else:
            if self.margin_account().available < amount:
                raise ValueError(f"perp available {self.margin_account().available} below {amount}")
            self._wallet -= amount
            self._free[asset] = self._free.get(asset, ZERO) + amount
            self._locked.setdefault(asset, ZERO)

    def margin_account(self, maint_rate: Decimal = MAINT_MARGIN_RATE) -> MarginAccount:
        """The perp wallet's margin figures, as Binance's `/fapi/v2/account` totals would show them."""
        upnl = sum((self.unrealized_pnl(s) for s in self._position), ZERO)
        notional = ZERO
        for symbol, position in self._position.items():
            mark = self.mark_price(symbol) if position else None
            if mark is not None:
                notional += abs(position) * mark
        initial = self._perp_exposure() / self.leverage
        margin_balance = self._wallet + upnl
        return MarginAccount(
            wallet=self._wallet,
            margin_balance=margin_balance,
            maint_margin=notional * maint_rate,
            initial_margin=initial,
            available=max(margin_balance - initial, ZERO),
        )

    def unrealized_pnl(self, symbol: str) -> Decimal:
        position, entry, mark = self._position.get(symbol, ZERO), self._entry.get(symbol), self.mark_price(symbol)
        if position == 0 or entry is None or mark is None:
            return ZERO
        return position * (mark - entry)

    def credit_spot(self, asset: str, amount: Decimal) -> None:
        """Move `amount` (negative: out) into the free spot balance of `asset` (transfers, deposits)."""
        if self._free.get(asset, ZERO) + amount < 0:
            raise ValueError(f"credit_spot: {asset} free {self._free.get(asset, ZERO)} cannot cover {-amount}")
        self._credit(asset, amount)

    def credit_perp_wallet(self, amount: Decimal) -> None:
        """Move `amount` (negative: out) into the USDT perp wallet (transfers, funding payments)."""
        self._wallet += amount

    def settle_funding(self, symbol: str, rate: Decimal) -> Decimal:
        """A funding time for `symbol`: the position pays `position x mark x rate` (longs pay a positive
        rate, shorts receive it), booked to the perp wallet. Returns the signed amount received."""
        position, mark = self._position.get(symbol, ZERO), self.mark_price(symbol)
        if position == 0 or mark is None:
            return ZERO
        amount = (-position * mark * rate).quantize(Decimal("0.00000001"))
        self._wallet += amount
        return amount

    # --- event stream -------------------------------------------------------------------------------

    def drain_updates(self) -> list[OrderUpdate]:
        """Every OrderUpdate produced since the last drain, in order."""
        out, self._queue = self._queue, []
        return out

    def forget_closed(self) -> int:
        """Drop every order no longer open, and every fill, from the history (`all_orders`, `fills`); returns
        how many orders were dropped. For a long run that measures its client's memory (`legguard bench`): a
        real venue keeps its history on its side of the wire. Balances and positions are unchanged."""
        before = len(self._every)
        self._every = [o for o in self._every if o.status is OrderStatus.OPEN]
        self._orders = {k: o for k, o in self._orders.items() if o.status is OrderStatus.OPEN}
        self._fills.clear()
        return before - len(self._every)

    # --- internals ----------------------------------------------------------------------------------

    def _check_filters(self, request: OrderRequest, market: Market, book: _Book) -> None:
        cid = request.client_order_id

        def reject(detail: str) -> OrderRejected:
            return OrderRejected(cid, RejectReason.INVALID_ORDER, f"{market.symbol}: {detail}")

        if request.type is OrderType.LIMIT:
            assert request.price is not None
            if request.price <= 0:
                raise reject(f"price {request.price} must be > 0")
            if request.price % market.tick_size != 0:
                raise reject(f"price {request.price} is not a multiple of tick size {market.tick_size}")
        if request.amount % market.step_size != 0:
            raise reject(f"quantity {request.amount} is not a multiple of step size {market.step_size}")
        if request.amount < market.min_qty:
            raise reject(f"quantity {request.amount} is below min qty {market.min_qty}")
        reference = request.price if request.type is OrderType.LIMIT else self._reference_price(book, request.side)
        if reference is not None and reference * request.amount < market.min_notional and not request.reduce_only:
            raise reject(f"notional {reference * request.amount} is below min notional {market.min_notional}")

    def _reference_price(self, book: _Book, side: Side) -> Decimal | None:
        """What a market order's notional is judged at: the mid, else the best price it would meet."""
        mid = self.mid(book.market.symbol)
        if mid is not None:
            return mid
        return book.best(side.opposite)

    def _check_funds(self, request: OrderRequest, market: Market, amount: Decimal, walk_cost: Decimal) -> None:
        cid = request.client_order_id
        if market.kind is MarketKind.SPOT:
            if request.side is Side.BUY:
                limit_price = request.price if request.type is OrderType.LIMIT else None
                need = limit_price * amount if limit_price is not None else walk_cost
                asset = market.quote
            else:
                need, asset = amount, market.base
            if self._free.get(asset, ZERO) < need:
                raise OrderRejected(cid, RejectReason.INSUFFICIENT_FUNDS, MSG_BALANCE)
            return
        if request.reduce_only:
            return  # closing exposure needs no new margin
        limit_price = request.price if request.type is OrderType.LIMIT else None
        new = limit_price * amount if limit_price is not None else walk_cost
        if (self._position_notional() + self._perp_notional + new) / self.leverage > self._wallet:
            raise OrderRejected(cid, RejectReason.INSUFFICIENT_FUNDS, MSG_MARGIN)

    def _perp_exposure(self) -> Decimal:
        """|position notional| at mark + notional of open non-reduce-only perp orders, over all perps."""
        total = self._position_notional()
        for order in self._perp_open:  # the open ones only: the history is not walked
            total += _price(order) * order.remaining
        return total

    def _position_notional(self) -> Decimal:
        total = ZERO
        for symbol, position in self._position.items():
            if position:
                mark = self.mark_price(symbol)
                assert mark is not None
                total += abs(position) * mark
        return total

    def _move(self, asset: str, amount: Decimal, *, to_locked: bool) -> None:
        self._free.setdefault(asset, ZERO)
        self._locked.setdefault(asset, ZERO)
        sign = 1 if to_locked else -1
        self._free[asset] -= sign * amount
        self._locked[asset] += sign * amount

    def _credit(self, asset: str, amount: Decimal) -> None:
        self._free[asset] = self._free.get(asset, ZERO) + amount
        self._locked.setdefault(asset, ZERO)

    def _execute(self, order: _Order, quantity: Decimal, price: Decimal, maker: bool, now: float) -> Decimal:
        """Fill `quantity` of `order` at `price`; returns what actually filled (a reduce-only order may fill
        less, down to nothing, when the position it reduces is smaller than the order)."""
        assert order.status is OrderStatus.OPEN, "a terminal order never changes again"
        market = order.market
        realized = ZERO
        if order.reduce_only:
            position = self._position[market.symbol]
            reducible = max(ZERO, -position if order.side is Side.BUY else position)
            quantity = min(quantity, reducible)
            if quantity <= 0:
                self._finish(order, OrderStatus.EXPIRED, now)
                return ZERO
        if order.fill_cap is not None:
            quantity = min(quantity, order.fill_cap - order.filled)
            if quantity <= 0:
                return ZERO
        fee, fee_asset = fee_for(market, order.side, price, quantity, maker=maker)
        if market.kind is MarketKind.SPOT:
            self._settle_spot(order, quantity, price, fee)
            if order.side is Side.BUY:
                order.fee_base += fee
            else:
                order.fee_quote += fee
        else:
            realized = self._settle_perp(market.symbol, order.side, quantity, price)
            self._wallet += realized - fee
            order.fee_quote += fee
        order.filled += quantity
        order.cost += price * quantity
        order.timestamp = now
        if order in self._perp_open:
            self._perp_notional -= _price(order) * quantity
        if order.fill_cap is not None and order.exhausted:
            self._books[market.symbol].unrested(order)  # out of the book from now on
        self._fills.append(
            Fill(
                trade_id=next(self._trade_ids),
                client_order_id=order.client_order_id,
                venue_order_id=order.venue_order_id,
                symbol=market.symbol,
                side=order.side,
                price=price,
                quantity=quantity,
                fee=fee,
                fee_asset=fee_asset,
                maker=maker,
                timestamp=now,
                realized_pnl=realized,
            )
        )
        if order.filled == order.amount:
            self._finish(order, OrderStatus.CLOSED, now)
        else:
            self._queue.append(order.snapshot())
        if market.kind is MarketKind.LINEAR:
            self._expire_stale_reduce_only(market.symbol, now)
        return quantity

    def _settle_spot(self, order: _Order, quantity: Decimal, price: Decimal, fee: Decimal) -> None:
        market = order.market
        if order.side is Side.BUY:
            if order.type is OrderType.LIMIT:
                # The reservation was made at the limit price; a better taker price frees the difference.
                held = _price(order) * quantity
                self._locked[market.quote] -= held
                order.reserved -= held
                self._credit(market.quote, held - price * quantity)
            else:
                self._free[market.quote] -= price * quantity
            self._credit(market.base, quantity - fee)
        else:
            if order.type is OrderType.LIMIT:
                self._locked[market.base] -= quantity
                order.reserved -= quantity
            else:
                self._free[market.base] -= quantity
            self._credit(market.quote, price * quantity - fee)

    def _settle_perp(self, symbol: str, side: Side, quantity: Decimal, price: Decimal) -> Decimal:
        """Move the position and entry price; return the pnl realised by the reducing part."""
        position = self._position[symbol]
        delta = quantity if side is Side.BUY else -quantity
        entry = self._entry.get(symbol, ZERO)
        realized = ZERO
        if position == 0 or (position > 0) == (delta > 0):
            new = position + delta
            self._entry[symbol] = (abs(position) * entry + quantity * price) / abs(new)
        else:
            closing = min(quantity, abs(position))
            # Binance books realised pnl to 8 decimals; the entry price itself may carry more.
            realized = (closing * (price - entry) * (1 if position > 0 else -1)).quantize(FEE_QUANTUM, ROUND_HALF_UP)
            new = position + delta
            if new == 0:
                self._entry.pop(symbol, None)
            elif (new > 0) != (position > 0):
                self._entry[symbol] = price  # flipped: the rest opened a new position here
        self._position[symbol] = new
        return realized

    def _expire_stale_reduce_only(self, symbol: str, now: float) -> None:
        """Reduce-only orders that can no longer reduce (flat, or the position flipped) are expired."""
        position = self._position[symbol]
        for order in list(self._books[symbol].resting):
            if order.reduce_only and order.status is OrderStatus.OPEN:
                reducible = -position if order.side is Side.BUY else position
                if reducible <= 0:
                    self._finish(order, OrderStatus.EXPIRED, now)

    def _finish(self, order: _Order, status: OrderStatus, now: float) -> None:
        """Move an open order to a terminal status, releasing what it still holds, and queue the update."""
        assert order.status is OrderStatus.OPEN, "a terminal order never changes again"
        order.status = status
        order.timestamp = now
        if order.reserved:
            market = order.market
            self._move(market.quote if order.side is Side.BUY else market.base, order.reserved, to_locked=False)
            order.reserved = ZERO
        if order in self._perp_open:
            del self._perp_open[order]
            self._perp_notional -= _price(order) * order.remaining
        book = self._books[order.market.symbol]
        if order in book.resting:
            book.resting.remove(order)
            book.unrested(order)
            book.sequence += 1
        self._queue.append(order.snapshot())


def _levels(name: str, levels: Sequence[tuple[Decimal, Decimal]]) -> dict[Decimal, Decimal]:
    out: dict[Decimal, Decimal] = {}
    for price, qty in levels:
        if not (price.is_finite() and qty.is_finite() and price > ZERO and qty >= ZERO):
            raise ValueError(f"set_book: {name} level ({price}, {qty}) needs price > 0 and quantity >= 0")
        if qty:
            out[price] = out[price] + qty if price in out else qty
    return out


def _walk(
    liquidity: Mapping[Decimal, Decimal], side: Side, amount: Decimal, limit: Decimal | None
) -> list[tuple[Decimal, Decimal]]:
    """The (price, quantity) a taker of `side` would take from others' `liquidity`, best first, up to `limit`."""
    out: list[tuple[Decimal, Decimal]] = []
    left = amount
    for level in sorted(liquidity, reverse=side is Side.SELL):
        if left <= 0 or (limit is not None and not _crosses(side, limit, level)):
            break
        qty = min(left, liquidity[level])
        out.append((level, qty))
        left -= qty
    return out


def _take(liquidity: dict[Decimal, Decimal], level: Decimal, quantity: Decimal) -> None:
    left = liquidity[level] - quantity
    if left > 0:
        liquidity[level] = left
    else:
        del liquidity[level]
