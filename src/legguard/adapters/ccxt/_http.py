"""The order path's transport: keep-alive HTTP/1.1 connections on trio that send a request ccxt built and
signed as ready bytes with one non-blocking `send`, so two legs leave back to back from one place.

ccxt's own `fetch` (aiohttp on the asyncio side) spends a few hundred microseconds between a call and its
bytes reaching the socket; here the request is serialised at arm time, a warm connection is taken from the
pool, and `Connection.send_now` writes synchronously. Answers are read by trio and handed back to ccxt's own
error handling and parsing (see `CcxtVenue`): only the transport is ours.
"""

from __future__ import annotations

import errno
import select
import socket
import ssl
import time
import urllib.parse
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

# (what, key, time.perf_counter_ns()) after bytes are written ("send") or an answer is read ("recv"). A
# measuring hook for `legguard bench`; None (the default) costs one comparison.
WireTap = Callable[[str, str, int], None]

MAX_HEAD = 64 * 1024  # status line + headers
MAX_BODY = 16 * 1024 * 1024
_READ = 65536


class HttpError(Exception):
    """The connection failed or the peer answered something that is not HTTP/1.1."""


class ConnectionLost(HttpError):
    """The connection closed or reset before a whole answer arrived: the request may have been executed."""


class BadHttp(HttpError):
    """The answer does not parse as HTTP/1.1."""


# --- requests -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str  # "http" or "https"
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """(origin, request target) of an absolute http(s) URL. URL userinfo is not sent: the emulator uses it as
    a label that makes its URLs look like Binance's to ccxt."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url: {url!r} is not an absolute http(s) URL")
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Origin(scheme, parts.hostname, port), target


def encode_request(method: str, target: str, origin: Origin, headers: Mapping[str, str], body: bytes | None) -> bytes:
    """One HTTP/1.1 request as bytes. A header name or value with a line break is refused (it would split
    the request)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {origin.host_header}"]
    for name, value in headers.items():
        if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
            continue
        text = f"{name}: {value}"
        if "\r" in text or "\n" in text:
            raise ValueError(f"{method} {target}: header {name!r} contains a line break")
        lines.append(text)
    if body is not None or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body or b'')}")
    if "\r" in target or "\n" in target or " " in target:
        raise ValueError(f"{method}: request target {target!r} contains a space or line break")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (body or b"")


# --- answers ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # as received (duplicates joined with ", "); look up with `header()`
    body: bytes
    keep_alive: bool
    received_ns: int = 0  # perf_counter_ns when the whole answer was in

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


class ResponseParser:
    """Incremental HTTP/1.1 response framing: Content-Length, chunked, or close-delimited bodies;
    1xx interim answers are skipped; gzip/deflate bodies are decoded."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self, *, eof: bool = False) -> Response | None:
        """The next whole answer, or None if more bytes are needed. `eof`: the peer closed, so a body
        without a declared length ends here (and a partial answer is an error)."""
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise BadHttp(f"response head longer than {MAX_HEAD} bytes")
                if eof:
                    raise ConnectionLost("connection closed before a response" if not self._buf else
                                         "connection closed inside a response head")  # fmt: skip
                return None
            status, reason, version, headers = _parse_head(bytes(self._buf[:end]))
            if 100 <= status < 200 and status != 101:
                del self._buf[: end + 4]
                continue
            start = end + 4
            lowered = {k.lower(): v for k, v in headers.items()}
            keep_alive = version == "HTTP/1.1" and "close" not in lowered.get("connection", "").lower()
            if status in (204, 304):
                body, used = b"", start
            elif "chunked" in lowered.get("transfer-encoding", "").lower():
                found = _chunked(self._buf, start)
                if found is None:
                    if eof:
                        raise ConnectionLost("connection closed inside a chunked body")
                    return None
                body, used = found
            elif "content-length" in lowered:
                try:
                    length = int(lowered["content-length"].strip())
                except ValueError:
                    raise BadHttp(f"Content-Length {lowered['content-length']!r} is not a number") from None
                if not 0 <= length <= MAX_BODY:
                    raise BadHttp(f"Content-Length {length} out of range")
                if len(self._buf) - start < length:
                    if eof:
                        raise ConnectionLost("connection closed inside a response body")
                    return None
                body, used = bytes(self._buf[start : start + length]), start + length
            else:
                if not eof:
                    if len(self._buf) - start > MAX_BODY:
                        raise BadHttp(f"response body longer than {MAX_BODY} bytes")
                    return None
                body, used, keep_alive = bytes(self._buf[start:]), len(self._buf), False
            del self._buf[:used]
            encoding = lowered.get("content-encoding", "").strip().lower()
            if encoding in ("gzip", "deflate"):
                body = _decompress(body, encoding)
            elif encoding not in ("", "identity"):
                raise BadHttp(f"unsupported Content-Encoding {encoding!r}")
            return Response(status, reason, headers, body, keep_alive)


def _parse_head(head: bytes) -> tuple[int, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadHttp("undecodable response head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise BadHttp(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise BadHttp(f"bad header line {line[:80]!r}")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(parts[1]), parts[2] if len(parts) > 2 else "", parts[0], headers


def _chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """(body, bytes used) of a complete chunked body starting at `start`, or None if incomplete."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadHttp(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            # Trailers (ignored) end with an empty line.
            trailer_end = buf.find(b"\r\n\r\n", eol)
            if buf[eol : eol + 4] == b"\r\n\r\n":
                return bytes(out), eol + 4
            if trailer_end < 0:
                return None
            return bytes(out), trailer_end + 4
        data_start = eol + 2
        if len(buf) < data_start + size + 2:
            return None
        if buf[data_start + size : data_start + size + 2] != b"\r\n":
            raise BadHttp("chunk not followed by CRLF")
        out += buf[data_start : data_start + size]
        if len(out) > MAX_BODY:
            raise BadHttp(f"response body longer than {MAX_BODY} bytes")
        pos = data_start + size + 2


def _decompress(body: bytes, encoding: str) -> bytes:
    try:
        if encoding == "gzip":
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send it
    except zlib.error as exc:
        raise BadHttp(f"{encoding} body does not decode: {exc}") from None


# --- connections --------------------------------------------------------------------------------------


class Connection:
    """One keep-alive connection, owned by one request at a time. `send_now` is synchronous on purpose: a
    caller writes several requests without a checkpoint between them."""

    __slots__ = ("_closed", "_inbox", "_outbox", "_parser", "_pending", "_quiet", "_tls", "origin", "sock", "tap")

    def __init__(self, origin: Origin, sock: socket.socket, tls: ssl.SSLObject | None = None,
                 inbox: ssl.MemoryBIO | None = None, outbox: ssl.MemoryBIO | None = None) -> None:  # fmt: skip
        self.origin = origin
        self.sock = sock
        self._tls, self._inbox, self._outbox = tls, inbox, outbox
        self._parser = ResponseParser()
        self._pending = b""  # bytes the kernel did not take yet (a full send buffer)
        self._closed = False
        self.tap: WireTap | None = None
        # `alive`'s common answer (nothing to read, no EOF, no error) from one poll(2) without an exception:
        # the kill switch's cancel takes a connection on its path, and a MSG_PEEK recv that raises
        # BlockingIOError cost ~14 µs there (in the run), the poll ~2.
        self._quiet = select.poll()
        self._quiet.register(sock, select.POLLIN | select.POLLPRI)

    def __repr__(self) -> str:
        return f"<Connection {self.origin.scheme}://{self.origin.host_header} fd={self.sock.fileno()}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @classmethod
    async def open(cls, origin: Origin, ssl_context: ssl.SSLContext | None) -> Connection:
        """Connect (and complete the TLS handshake for https); cancellation closes the half-open socket."""
        infos = await trio.socket.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                err = sock.connect_ex(addr)
                if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                    await trio.lowlevel.wait_writable(sock)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, f"connect to {origin.host_header}: {errno.errorcode.get(err, err)}")
                conn = cls(origin, sock)
                if origin.tls:
                    if ssl_context is None:
                        raise HttpError(f"{origin.host_header}: https needs an SSL context")
                    inbox, outbox = ssl.MemoryBIO(), ssl.MemoryBIO()
                    conn._tls = ssl_context.wrap_bio(inbox, outbox, server_hostname=origin.host)
                    conn._inbox, conn._outbox = inbox, outbox
                    await conn._handshake()
                return conn
            except OSError as exc:
                _close_socket(sock)
                last = exc
            except BaseException:
                _close_socket(sock)
                raise
        raise ConnectionLost(f"cannot connect to {origin.host_header}: {last}")

    async def _handshake(self) -> None:
        assert self._tls is not None and self._inbox is not None
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_tls()
                await self._flush_pending()
                data = await self._recv_raw()
                if not data:
                    raise ConnectionLost(f"{self.origin.host_header}: closed during the TLS handshake") from None
                self._inbox.write(data)
            except ssl.SSLError as exc:
                raise HttpError(f"{self.origin.host_header}: TLS handshake failed: {exc}") from None
        self._flush_tls()
        await self._flush_pending()

    def alive(self) -> bool:
        """Cheap check that an idle connection is still usable: nothing to read, no EOF (a server that
        closed an idle keep-alive connection shows EOF here). TLS 1.3 servers send session tickets after the
        handshake: those are read and absorbed, anything else means the connection is not clean."""
        if self._closed:
            return False
        if not self._quiet.poll(0) and (
            self._tls is None or (self._inbox is not None and not self._inbox.pending and not self._tls.pending())
        ):
            return True  # nothing received since the last answer: what the checks below would conclude
        if self._tls is None:
            try:
                self.sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            return False  # EOF, or bytes nobody asked for
        assert self._inbox is not None
        while True:
            try:
                data = self.sock.recv(_READ)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return False
            if not data:
                return False
            self._inbox.write(data)
        try:
            extra = self._tls.read(_READ)
        except ssl.SSLWantReadError:
            return True
        except ssl.SSLError:
            return False
        return not extra

    def send_now(self, data: bytes, key: str = "") -> None:
        """Write a whole request now, without yielding; the kernel normally takes all of it (a request is far
        smaller than a socket buffer), anything left is written by `flush`. Raises ConnectionLost."""
        if self._closed:
            raise ConnectionLost(f"{self.origin.host_header}: connection closed")
        if self._tls is not None:
            try:
                self._tls.write(data)
            except ssl.SSLError as exc:
                raise ConnectionLost(f"{self.origin.host_header}: TLS write failed: {exc}") from None
            assert self._outbox is not None
            data = self._outbox.read()
        if self._pending:
            self._pending += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            raise ConnectionLost(f"{self.origin.host_header}: send failed: {exc}") from None
        tap = self.tap
        if tap is not None:
            tap("send", key, time.perf_counter_ns())
        self._pending = data[sent:]

    async def flush(self) -> None:
        await self._flush_pending()

    def _flush_tls(self) -> None:
        assert self._outbox is not None
        out = self._outbox.read()
        if out:
            self._pending += out

    async def _flush_pending(self) -> None:
        while self._pending:
            await trio.lowlevel.wait_writable(self.sock)
            try:
                sent = self.sock.send(self._pending)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise ConnectionLost(f"{self.origin.host_header}: send failed: {exc}") from None
            self._pending = self._pending[sent:]

    async def _recv_raw(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                return self.sock.recv(_READ)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise ConnectionLost(f"{self.origin.host_header}: receive failed: {exc}") from None

    async def _recv(self) -> bytes:
        """Application bytes (decrypted for TLS); b"" at EOF."""
        if self._tls is None:
            return await self._recv_raw()
        assert self._inbox is not None
        while True:
            try:
                return self._tls.read(_READ)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError as exc:
                raise ConnectionLost(f"{self.origin.host_header}: TLS read failed: {exc}") from None
            data = await self._recv_raw()
            if not data:
                return b""
            self._inbox.write(data)

    async def read_response(self, key: str = "") -> Response:
        """The answer to the request written last. The connection is only reusable if the answer says
        keep-alive (the caller checks `Response.keep_alive`)."""
        await self._flush_pending()
        while True:
            response = self._parser.next()
            if response is not None:
                break
            data = await self._recv()
            if not data:
                response = self._parser.next(eof=True)
                if response is None:  # pragma: no cover - next(eof=True) returns or raises
                    raise ConnectionLost(f"{self.origin.host_header}: connection closed")
                break
            self._parser.feed(data)
        response.received_ns = time.perf_counter_ns()
        tap = self.tap
        if tap is not None:
            tap("recv", key, response.received_ns)
        if self._parser.buffered:
            response.keep_alive = False  # bytes after the answer we asked for: not a state to reuse
        return response

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close_socket(self.sock)


def _close_socket(sock: socket.socket) -> None:
    if sock.fileno() >= 0:
        trio.lowlevel.notify_closing(sock)
    sock.close()


@dataclass(eq=False)
class Pool:
    """Idle keep-alive connections to one origin. `take` is synchronous (a warm connection or None);
    `connect` opens a new one. `warm` is how many idle connections `keep_warm` holds ready."""

    origin: Origin
    ssl_context: ssl.SSLContext | None
    warm: int = 2
    tap: WireTap | None = None
    idle: list[Connection] = field(default_factory=list)
    opening: int = 0
    opened: int = 0  # connections ever opened (tests and the bench read it)
    closed: bool = False
    _wanted: trio.Event = field(default_factory=trio.Event)

    def take(self) -> Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.alive():
                conn.tap = self.tap
                self._want()
                return conn
            conn.close()
        self._want()
        return None

    def give(self, conn: Connection, response: Response | None) -> None:
        """Return a connection after a whole answer; anything else closes it."""
        if self.closed or response is None or not response.keep_alive or conn.closed or len(self.idle) >= 4 * self.warm:
            conn.close()
            return
        self.idle.append(conn)

    async def connect(self) -> Connection:
        self.opening += 1
        try:
            conn = await Connection.open(self.origin, self.ssl_context)
        finally:
            self.opening -= 1
        self.opened += 1
        conn.tap = self.tap
        return conn

    def _want(self) -> None:
        if len(self.idle) + self.opening < self.warm:
            self._wanted.set()

    async def keep_warm(self, retry: float = 1.0) -> None:
        """Run forever (in the venue's nursery): top the idle connections up to `warm`."""
        while not self._stopped():
            while len(self.idle) + self.opening < self.warm:
                try:
                    conn = await self.connect()
                except HttpError:
                    await trio.sleep(retry)  # the venue is unreachable: orders will report it themselves
                    continue
                if self._stopped():
                    conn.close()
                    return
                self.idle.append(conn)
            self._wanted = trio.Event()
            await self._wanted.wait()

    def _stopped(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        self._wanted.set()
