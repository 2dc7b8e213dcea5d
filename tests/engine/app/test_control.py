"""The control socket: owner-only, one engine per journal, stale sockets cleaned, newline-delimited JSON in
both directions, refusals and garbage answered without hurting the server. The client is the CLI's blocking
one, run in a thread."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from legguard.engine.app._control import (
    ControlClient,
    ControlError,
    EngineNotRunning,
    EngineRefused,
    claim_socket,
    serve_control,
    socket_path,
)
from legguard.engine.app._rpc import RpcError


class FakeRpc:
    """Stands in for `Rpc`: the transport is under test here (the core has tests of its own)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []

    def handle(self, command: str, args: dict[str, Any], via: str) -> Any:
        self.calls.append((command, args, via))
        if command == "close":
            raise RpcError("close: unknown package id(s) P9")
        if command == "boom":
            raise ZeroDivisionError("bug")
        return {"mode": "running", "echo": args}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "j.db"


async def test_requests_and_answers_over_one_connection(db: Path) -> None:
    rpc = FakeRpc()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, rpc, socket_path(db))
        mode = stat.S_IMODE(os.stat(socket_path(db)).st_mode)

        def client() -> list[Any]:
            with ControlClient(db) as c:
                out = [c.request("status"), c.request("halt", reason="maintenance")]
                with pytest.raises(EngineRefused, match="unknown package id"):
                    c.request("close", ids=["P9"])
                with pytest.raises(EngineRefused, match="internal error: ZeroDivisionError"):
                    c.request("boom")
                out.append(c.request("status"))  # the connection survived both
                return out

        answers = await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()

    assert mode == 0o600
    assert answers[0] == {"mode": "running", "echo": {}}
    assert answers[1]["echo"] == {"reason": "maintenance"}
    assert [c[0] for c in rpc.calls] == ["status", "halt", "close", "boom", "status"]
    assert all(via == "socket" for *_, via in rpc.calls)
    assert not socket_path(db).exists()  # removed on the way out


async def test_garbage_lines_get_an_error_answer(db: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, FakeRpc(), socket_path(db))

        def raw() -> list[bytes]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(socket_path(db)))
                s.sendall(b"not json\n[1,2]\n" + b'{"cmd": "status", "args": 3}\n')
                data = b""
                while data.count(b"\n") < 3:
                    data += s.recv(4096)
                return data.splitlines()

        lines = await trio.to_thread.run_sync(raw)
        nursery.cancel_scope.cancel()
    assert lines == [
        b'{"ok":false,"error":"request is not JSON"}',
        b'{"ok":false,"error":"expected {\\"cmd\\": \\"...\\", \\"args\\": {...}}"}',
        b'{"ok":false,"error":"\'args\' must be an object"}',
    ]


async def test_a_second_engine_on_the_same_journal_is_refused(db: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, FakeRpc(), socket_path(db))
        with pytest.raises(ControlError, match="another engine is running on this journal"):
            await trio.to_thread.run_sync(claim_socket, socket_path(db))
        nursery.cancel_scope.cancel()


def test_a_stale_socket_is_removed_and_reported_as_no_engine(db: Path) -> None:
    path = socket_path(db)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a SIGKILLed engine leaves

    with pytest.raises(EngineNotRunning, match="stale control socket"):
        ControlClient(db)
    claim_socket(path)

    assert not path.exists()


def test_no_socket_means_no_engine(db: Path) -> None:
    with pytest.raises(EngineNotRunning, match="no engine is running on journal"):
        ControlClient(db)


def test_something_else_at_the_socket_path_is_left_alone(db: Path) -> None:
    socket_path(db).write_text("mine")
    with pytest.raises(ControlError, match="is not a socket"):
        claim_socket(socket_path(db))
    assert socket_path(db).read_text() == "mine"


def test_too_long_a_path_is_refused_with_advice(tmp_path: Path) -> None:
    db = tmp_path / ("x" * 120) / "j.db"
    with pytest.raises(ControlError, match="use a shorter --db path"):
        claim_socket(socket_path(db))
