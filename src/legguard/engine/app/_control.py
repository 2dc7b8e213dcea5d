"""The control channel: a Unix domain socket beside the journal (`<db>.sock`, mode 0600, so only the user the
engine runs as can reach it), speaking newline-delimited JSON. One request per line,
`{"cmd": "status" | "halt" | "resume" | "close" | "stop", "args": {...}}`; one answer per line,
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. A connection may carry many requests
(`legguard status --watch` keeps one open).

The server is a trio task in the engine's nursery; the client is plain blocking sockets (the CLI commands).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from ._rpc import Rpc, RpcError

log = logging.getLogger("legguard.control")

MAX_LINE = 64 * 1024
# sockaddr_un.sun_path is 108 bytes on Linux (104 on BSD/macOS), including the terminating NUL.
MAX_SOCKET_PATH = 103


class ControlError(Exception):
    """The control channel cannot be served or reached; the message says what to do."""


class EngineNotRunning(ControlError):
    """No engine answers on the socket for that journal."""


class EngineRefused(ControlError):
    """The engine answered, and refused the command (unknown package, bad arguments)."""


def socket_path(db: Path) -> Path:
    return db.with_name(db.name + ".sock")


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ControlError(
            f"control socket path {str(path)!r} is longer than {MAX_SOCKET_PATH} bytes (a Unix socket limit); "
            "use a shorter --db path"
        )


def _alive(path: Path) -> bool:
    """Does something accept connections on `path`?"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def claim_socket(path: Path) -> None:
    """Refuse to start if a live engine already serves `path`; remove a stale socket a dead engine left.
    Called before the journal is opened for writing, so two engines never share one journal."""
    _check_length(path)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{str(path)!r} exists and is not a socket; move it away (the control socket goes there)")
    if _alive(path):
        raise ControlError(
            f"another engine is running on this journal (it answers on {str(path)!r}); "
            "stop it first (`legguard stop --db ...`) or use another --db"
        )
    log.info("removing stale control socket %s (no engine answers on it)", path)
    path.unlink(missing_ok=True)


async def serve_control(rpc: Rpc, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `rpc` on `path` until cancelled; the socket file is removed on the way out."""
    claim_socket(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # created 0600: no window in which another user could connect
    try:
        await sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot create the control socket {str(path)!r}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    ino = _own(path)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    log.info("control socket %s", path)
    try:
        task_status.started()
        await trio.serve_listeners(functools.partial(_session, rpc), [listener])
    finally:
        _remove_if_ours(path, ino)
        with trio.CancelScope(shield=True):
            await listener.aclose()


def _own(path: Path) -> int:
    os.chmod(path, 0o600)
    return path.stat().st_ino


def _remove_if_ours(path: Path, ino: int) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_ino == ino:  # never remove a socket another engine created meanwhile
            path.unlink()


async def _session(rpc: Rpc, stream: trio.abc.Stream) -> None:
    buffer = b""
    try:
        async with stream:
            while True:
                while b"\n" not in buffer:
                    if len(buffer) > MAX_LINE:
                        await stream.send_all(_encode({"ok": False, "error": "request line too long"}))
                        return
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                line, buffer = buffer.split(b"\n", 1)
                await stream.send_all(_encode(answer(rpc, line)))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the client went away


def answer(rpc: Rpc, line: bytes) -> dict[str, Any]:
    """One request line -> one answer (never raises for anything the client sent)."""
    try:
        request = json.loads(line)
    except ValueError:
        return {"ok": False, "error": "request is not JSON"}
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return {"ok": False, "error": 'expected {"cmd": "...", "args": {...}}'}
    args = request.get("args") or {}
    if not isinstance(args, dict):
        return {"ok": False, "error": "'args' must be an object"}
    try:
        return {"ok": True, "result": rpc.handle(request["cmd"], args, via="socket")}
    except RpcError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # a bug must not take the engine down through its control channel
        log.exception("control command %r failed", request["cmd"])
        return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}


def _encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, default=str, separators=(",", ":")) + "\n").encode()


# --- the client (blocking; the CLI commands) ------------------------------------------------------------


class ControlClient:
    """A connection to the engine that writes `db`."""

    def __init__(self, db: Path, timeout: float = 10.0) -> None:
        self.path = socket_path(db)
        self.db = db
        _check_length(self.path)
        if not self.path.exists():
            raise EngineNotRunning(
                f"no engine is running on journal {str(db)!r} (no control socket {str(self.path)!r})"
            )
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(self.path))
        except OSError as exc:
            self._sock.close()
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                raise EngineNotRunning(
                    f"no engine is running on journal {str(db)!r} (stale control socket {str(self.path)!r})"
                ) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise ControlError(f"{str(self.path)!r}: permission denied (run as the engine's user)") from None
            raise ControlError(f"cannot reach the engine on {str(self.path)!r}: {exc.strerror}") from None
        self._buffer = b""

    def request(self, cmd: str, **args: Any) -> Any:
        try:
            self._sock.sendall(_encode({"cmd": cmd, "args": args}))
            while b"\n" not in self._buffer:
                data = self._sock.recv(65536)
                if not data:
                    raise EngineNotRunning("the engine closed the control connection (it is shutting down?)")
                self._buffer += data
        except TimeoutError:
            raise ControlError(f"the engine did not answer {cmd!r} in time") from None
        except OSError as exc:
            raise EngineNotRunning(f"lost the control connection: {exc.strerror or exc}") from None
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line)
        if not reply.get("ok"):
            raise EngineRefused(str(reply.get("error", "refused")))
        return reply.get("result")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def connect(db: Path, timeout: float = 10.0) -> Iterator[ControlClient]:
    client = ControlClient(db, timeout)
    try:
        yield client
    finally:
        client.close()
