"""The order path's HTTP/1.1 transport (`adapters/ccxt/_http.py`): framing of answers, serialisation of requests, and
keep-alive connections over real loopback sockets; then `CcxtVenue.release` against the emulator: both legs
written before the caller yields, cancels signed while the order is in flight."""

from __future__ import annotations

import gzip
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import pytest
import trio
from conftest import ETH, ETH_PERP, emulated, maker

from legguard.adapters.ccxt._http import (
    BadHttp,
    Connection,
    ConnectionLost,
    Origin,
    Pool,
    ResponseParser,
    encode_request,
    split_url,
)
from legguard.domain import DuplicateOrder, MarketKind, OrderStatus, RateLimited, Side, VenueError

# --- answers ------------------------------------------------------------------------------------------

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"


def test_an_answer_split_anywhere_comes_out_whole_once() -> None:
    raw = HEAD + b'{"ok":true}' + HEAD + b'{"ok":fals}'
    for cut in range(1, len(raw)):
        parser = ResponseParser()
        got = []
        for part in (raw[:cut], raw[cut:]):
            parser.feed(part)
            while (r := parser.next()) is not None:
                got.append(r)
        assert [(r.status, r.body, r.keep_alive) for r in got] == [(200, b'{"ok":true}', True),
                                                                  (200, b'{"ok":fals}', True)]  # fmt: skip
        assert got[0].header("content-type") == "application/json"


def test_chunked_bodies_with_extensions_and_trailers() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\n{\"cod\r\n6\r\ne\":-1}\r\n0\r\nX-Trailer: y\r\n\r\n")  # fmt: skip
    r = parser.next()
    assert r is not None and (r.status, r.reason, r.body) == (400, "Bad Request", b'{"code":-1}')
    assert parser.buffered == 0


def test_interim_answers_are_skipped_and_close_delimited_bodies_end_at_eof() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 503 Service Unavailable\r\n\r\nbusy")
    assert parser.next() is None  # no length: the body runs until the peer closes
    r = parser.next(eof=True)
    assert r is not None and (r.status, r.body, r.keep_alive) == (503, b"busy", False)


def test_connection_close_and_gzip() -> None:
    body = gzip.compress(b'{"a":1}')
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Encoding: gzip\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
    r = parser.next()
    assert r is not None and r.body == b'{"a":1}' and r.keep_alive is False


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"HTTX/1.1 200 OK\r\n\r\n", BadHttp),
        (b"HTTP/1.1 20 OK\r\n\r\n", BadHttp),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", BadHttp),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", BadHttp),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", BadHttp),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 0\r\n\r\n", BadHttp),
    ],
)
def test_what_is_not_http_is_refused(raw: bytes, error: type[Exception]) -> None:
    parser = ResponseParser()
    parser.feed(raw)
    with pytest.raises(error):
        parser.next()


@pytest.mark.parametrize("raw", [b"", b"HTTP/1.1 200 OK\r\nContent-Le", HEAD + b'{"ok"'])
def test_eof_inside_an_answer_is_a_lost_connection(raw: bytes) -> None:
    parser = ResponseParser()
    parser.feed(raw)
    assert parser.next() is None
    with pytest.raises(ConnectionLost):
        parser.next(eof=True)


# --- requests -----------------------------------------------------------------------------------------


def test_urls_split_into_origin_and_target_without_userinfo() -> None:
    origin, target = split_url("https://fapi.legguard-emulator@127.0.0.1:8766/fapi/v1/order?a=1&b=2")
    assert origin == Origin("https", "127.0.0.1", 8766) and target == "/fapi/v1/order?a=1&b=2"
    assert origin.host_header == "127.0.0.1:8766"
    assert split_url("https://api.binance.com/api/v3/order")[0].host_header == "api.binance.com"
    with pytest.raises(ValueError, match="url"):
        split_url("ftp://x/y")


def test_requests_carry_host_and_length_and_refuse_line_breaks() -> None:
    origin = Origin("http", "127.0.0.1", 8765)
    wire = encode_request("POST", "/api/v3/order", origin, {"X-MBX-APIKEY": "k", "Content-Length": "99"}, b"a=1")
    assert wire == (b"POST /api/v3/order HTTP/1.1\r\nHost: 127.0.0.1:8765\r\nX-MBX-APIKEY: k\r\n"
                    b"Content-Length: 3\r\n\r\na=1")  # fmt: skip
    assert b"Content-Length" not in encode_request("DELETE", "/o?x=1", origin, {}, None)
    with pytest.raises(ValueError, match="line break"):
        encode_request("GET", "/", origin, {"X": "a\r\nEvil: 1"}, None)


# --- connections over loopback ------------------------------------------------------------------------


@asynccontextmanager
async def server(answers: list[bytes], close_after: bool = False) -> AsyncIterator[tuple[Origin, list[bytes]]]:
    """A loopback server that answers each request (one read each) with the next canned answer."""
    received: list[bytes] = []
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    async def handle(conn: trio.socket.SocketType) -> None:
        with conn:
            for answer in answers:
                data = await conn.recv(65536)
                if not data:
                    return
                received.append(data)
                await conn.send(answer)
            if close_after:
                return
            await trio.sleep_forever()

    async def accept(nursery: trio.Nursery) -> None:
        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(handle, conn)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept, nursery)
        yield Origin("http", "127.0.0.1", port), received
        nursery.cancel_scope.cancel()
    listener.close()


async def test_a_connection_writes_synchronously_and_is_reused_after_a_keep_alive_answer() -> None:
    ok = HEAD + b'{"ok":true}'
    async with server([ok, ok]) as (origin, received):
        pool = Pool(origin, None, warm=1)
        conn = await pool.connect()
        stamps: list[tuple[str, str]] = []
        conn.tap = lambda what, key, ns: stamps.append((what, key))
        request = encode_request("POST", "/o", origin, {}, b"x=1")
        conn.send_now(request, "a")
        assert stamps == [("send", "a")]  # written before anything awaited
        answer = await conn.read_response("a")
        assert answer.status == 200 and stamps[-1] == ("recv", "a")
        pool.give(conn, answer)
        again = pool.take()
        assert again is conn
        again.send_now(request)
        second = await again.read_response()
        assert second.body == b'{"ok":true}'
        assert received == [request, request]
        pool.give(again, second)
        pool.close()
        assert again.closed


async def test_an_idle_connection_the_server_closed_is_not_taken() -> None:
    async with server([HEAD + b'{"ok":true}'], close_after=True) as (origin, _):
        pool = Pool(origin, None, warm=1)
        conn = await pool.connect()
        conn.send_now(encode_request("GET", "/", origin, {}, None))
        pool.give(conn, await conn.read_response())
        await trio.sleep(0.05)  # the server closes it
        with trio.fail_after(2):
            while conn.alive():  # noqa: ASYNC110 - a socket's state, nothing to wait on
                await trio.sleep(0.01)
        assert pool.take() is None and conn.closed
        pool.close()


async def test_alive_is_decided_by_what_the_idle_socket_received() -> None:
    # The quiet case answers from one poll; anything received (bytes nobody asked for, EOF) still says no.
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    conn = Connection(Origin("http", "127.0.0.1", 1), ours)
    assert conn.alive() and conn.alive()  # nothing received: alive, and the check consumed nothing
    peer.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert not conn.alive()
    conn.close()
    assert not conn.alive()
    ours2, peer2 = socket.socketpair()
    ours2.setblocking(False)
    conn2 = Connection(Origin("http", "127.0.0.1", 1), ours2)
    peer2.close()  # the server closed the idle connection: EOF
    assert not conn2.alive()
    conn2.close()
    peer.close()


async def test_a_reset_mid_answer_is_a_lost_connection() -> None:
    async with server([b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"], close_after=True) as (origin, _):
        conn = await Connection.open(origin, None)
        conn.send_now(encode_request("GET", "/", origin, {}, None))
        with pytest.raises(ConnectionLost):
            await conn.read_response()
        conn.close()


async def test_connecting_to_a_closed_port_fails_cleanly() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(ConnectionLost, match="cannot connect"):
        await Connection.open(Origin("http", "127.0.0.1", port), None)


# --- CcxtVenue: release, fire, prepared cancels -------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_release_writes_both_legs_before_the_caller_yields(tls: bool) -> None:
    async with emulated(tls=tls, stream_ready_timeout=0) as rig:
        bid, _, _, perp_ask = await rig.books()
        stamps: list[tuple[str, str]] = []
        rig.venue.set_tap(lambda what, key, ns: stamps.append((what, key)))
        spot = rig.venue.arm(maker("r1-SE1", ETH, Side.BUY, bid))
        perp = rig.venue.arm(maker("r1-PE1", ETH_PERP, Side.SELL, perp_ask))
        with trio.fail_after(5):  # the pools' warm connections
            while any(not p.idle for side in (rig.venue._spot, rig.venue._perp) for p in side.pools.values()):  # noqa: ASYNC110
                await trio.sleep(0.01)

        rig.venue.release([spot, perp])
        written = list(stamps)  # no checkpoint since release(): nothing else could have run

        assert written == [("send", "r1-SE1"), ("send", "r1-PE1")]
        acks = [await rig.venue.fire(spot), await rig.venue.fire(perp)]
        assert [a.status for a in acks] == [OrderStatus.OPEN, OrderStatus.OPEN]
        assert stamps.count(("send", "r1-SE1")) == 1  # fire did not send again
        # The kill switch's cancel was signed while the order was in flight, and is used once.
        assert "r1-SE1" in rig.venue._cancels
        cancelled = await rig.venue.cancel_order(ETH, "r1-SE1")
        assert cancelled.status is OrderStatus.CANCELED and "r1-SE1" not in rig.venue._cancels
        assert ("send", "cancel:r1-SE1") in stamps


async def test_a_refusal_at_release_is_raised_by_fire_and_nothing_is_sent() -> None:
    async with emulated(stream_ready_timeout=0, budget_burst=10.0, budget_reserve=9.9, budget_deadman=0.0) as rig:
        bid, *_ = await rig.books()
        stamps: list[tuple[str, str]] = []
        rig.venue.set_tap(lambda what, key, ns: stamps.append((what, key)))
        armed = rig.venue.arm(maker("r2-PE1", ETH_PERP, Side.SELL, bid * 2))  # futures order costs 4 > 0.1
        rig.venue.release([armed])
        with pytest.raises(RateLimited, match="budget"):
            await rig.venue.fire(armed)
        assert stamps == [] and "r2-PE1" not in rig.orders(MarketKind.LINEAR)


async def test_an_order_released_with_no_warm_connection_is_sent_by_fire() -> None:
    async with emulated(stream_ready_timeout=0) as rig:
        bid, *_ = await rig.books()
        for side in (rig.venue._spot, rig.venue._perp):
            for pool in side.pools.values():
                pool.warm = 0
                for conn in pool.idle:
                    conn.close()
                pool.idle.clear()
        armed = rig.venue.arm(maker("r3-SE1", ETH, Side.BUY, bid - Decimal(1)))
        rig.venue.release([armed])
        ack = await rig.venue.fire(armed)
        assert ack.status is OrderStatus.OPEN


async def test_release_cancel_writes_at_once_and_cancel_order_only_reads_the_answer() -> None:
    async with emulated(stream_ready_timeout=0) as rig:
        bid, *_ = await rig.books()
        stamps: list[tuple[str, str]] = []
        rig.venue.set_tap(lambda what, key, ns: stamps.append((what, key)))
        ack = await rig.place(maker("r4-SE1", ETH, Side.BUY, bid - Decimal(1)))
        assert ack.status is OrderStatus.OPEN

        rig.venue.release_cancel(ETH, "r4-SE1")
        assert stamps[-1] == ("send", "cancel:r4-SE1")  # written before anything awaited
        cancelled = await rig.venue.cancel_order(ETH, "r4-SE1")

        assert cancelled.status is OrderStatus.CANCELED
        assert stamps.count(("send", "cancel:r4-SE1")) == 1 and ("recv", "cancel:r4-SE1") in stamps
        assert rig.orders(MarketKind.SPOT)["r4-SE1"]["status"] == "CANCELED"  # the emulator's own view


async def test_a_cancel_armed_for_an_answer_is_written_as_it_is_read_once_and_never_after_a_disarm() -> None:
    async with emulated(stream_ready_timeout=0) as rig:
        bid, *_ = await rig.books()
        stamps: list[tuple[str, str]] = []
        rig.venue.set_tap(lambda what, key, ns: stamps.append((what, key)))
        armed = rig.venue.arm(maker("r6-SE1", ETH, Side.BUY, bid - Decimal(1)))
        rig.venue.cancel_on_answer("r6-SE1", False, ETH, "r6-SE1")  # cancel it as soon as it is answered resting
        rig.venue.release([armed])
        ack = await rig.venue.fire(armed)

        assert ack.status is OrderStatus.OPEN  # the answer is still handed on, decoded as always
        answered = stamps.index(("recv", "r6-SE1"))
        assert stamps[answered + 1] == ("send", "cancel:r6-SE1")  # written right as the answer was read
        assert rig.venue.cancel_written("r6-SE1") and rig.venue.cancels_on_answer == 1
        rig.venue.release_cancel(ETH, "r6-SE1")  # the answer's step commands it: found written, not sent again
        cancelled = await rig.venue.cancel_order(ETH, "r6-SE1")
        assert cancelled.status is OrderStatus.CANCELED and stamps.count(("send", "cancel:r6-SE1")) == 1
        assert not rig.venue.cancel_written("r6-SE1")

        other = rig.venue.arm(maker("r6-SE2", ETH, Side.BUY, bid - Decimal(1)))
        rig.venue.cancel_on_answer("r6-SE2", False, ETH, "r6-SE2")
        rig.venue.disarm_cancel("r6-SE2", "r6-SE2")  # the core no longer sends it on that answer
        rig.venue.release([other])
        assert (await rig.venue.fire(other)).status is OrderStatus.OPEN
        assert ("send", "cancel:r6-SE2") not in stamps and rig.venue.cancels_on_answer == 1


@pytest.mark.parametrize("answered", [ETH, ETH_PERP])
async def test_a_duplicate_answer_is_no_refusal_for_a_cancel_armed_on_one(answered: str) -> None:
    # A cancel armed for the other leg's refusal must not leave on "that client id exists" (spot -2010
    # "Duplicate order sent.", USDⓈ-M -4116): the order is there, and the engine fetches it.
    async with emulated(stream_ready_timeout=0) as rig:
        bid, _, _, perp_ask = await rig.books()
        naked = await rig.place(maker("r8-SE1", ETH, Side.BUY, bid - Decimal(1)))
        assert naked.status is OrderStatus.OPEN
        price = bid - Decimal(2) if answered == ETH else perp_ask + Decimal(1)
        other = maker("r8-XE1", answered, Side.BUY if answered == ETH else Side.SELL, price)
        assert (await rig.place(other)).status is OrderStatus.OPEN
        stamps: list[tuple[str, str]] = []
        rig.venue.set_tap(lambda what, key, ns: stamps.append((what, key)))
        again = rig.venue.arm(other)
        rig.venue.cancel_on_answer("r8-XE1", True, ETH, "r8-SE1")  # cancel the naked leg if r8-XE1 is refused
        rig.venue.release([again])
        with pytest.raises(DuplicateOrder):
            await rig.venue.fire(again)

        assert ("recv", "r8-XE1") in stamps and ("send", "cancel:r8-SE1") not in stamps
        assert not rig.venue.cancel_written("r8-SE1") and rig.venue.cancels_on_answer == 0
        assert rig.orders(MarketKind.SPOT)["r8-SE1"]["status"] == "NEW"


async def test_a_cancel_refused_at_release_is_raised_by_cancel_order() -> None:
    async with emulated(stream_ready_timeout=0) as rig:
        rig.venue.release_cancel("NOPE/USDT", "r5-SE1")  # never raises here
        with pytest.raises(VenueError, match="NOPE/USDT"):
            await rig.venue.cancel_order("NOPE/USDT", "r5-SE1")
