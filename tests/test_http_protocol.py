"""The HTTP/1.1 server ``baton serve`` runs: httptools with a cap on request
heads and deadlines for slow clients, over a real socket (the in-process test
client has no parser)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from app.http_protocol import HEAD_LIMIT, CappedHttpToolsProtocol
from tests.servers import Server, free_port, serving


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("http")
    with serving(f"sqlite:///{workdir / 'baton.db'}", workdir) as running:
        yield running


def _connect(server: Server) -> socket.socket:
    parts = urlsplit(server.url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """The server may close the connection before it has read all of ``data``."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def _request(path: str = "/healthz", headers: str = "", close: bool = True) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: baton\r\n{headers}{connection}\r\n".encode()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_a_request_with_a_head_under_the_limit_is_served(server: Server) -> None:
    headers = f"X-Padding: {'a' * (HEAD_LIMIT - 200)}\r\n"
    with _connect(server) as sock:
        sock.sendall(_request(headers=headers))
        response = _read_all(sock)
    assert _status(response) == 200
    assert response.endswith(b'{"status":"ok"}')


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(f"X-Padding: {'a' * (HEAD_LIMIT + 10)}\r\n", id="one long header"),
        pytest.param("".join(f"X-H{i}: {'b' * 100}\r\n" for i in range(200)), id="many headers"),
    ],
)
def test_a_head_over_the_limit_gets_431_and_the_connection_closes(
    server: Server, headers: str
) -> None:
    with _connect(server) as sock:
        _send_quietly(sock, _request(headers=headers))
        response = _read_all(sock)
    assert _status(response) == 431
    assert response.count(b"HTTP/1.1") == 1  # one answer, not a 400 after it


def test_a_long_request_line_gets_431(server: Server) -> None:
    with _connect(server) as sock:
        _send_quietly(sock, _request(path="/healthz?" + "q" * (HEAD_LIMIT + 10)))
        assert _status(_read_all(sock)) == 431


def test_a_head_that_never_ends_is_refused_as_it_arrives(server: Server) -> None:
    """A header sent slowly, in pieces, without its end: refused once the bytes
    received pass the limit, not kept in memory until the header completes."""
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: baton\r\nX-Endless: ")
        refused = b""
        for _ in range(HEAD_LIMIT // 1024 + 8):
            try:
                sock.sendall(b"c" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.002)
        refused = _read_all(sock)
    assert _status(refused) == 431


def test_the_limit_applies_to_each_request_of_a_kept_alive_connection(server: Server) -> None:
    """Heads of pipelined requests are counted one by one, not added up."""
    padding = f"X-Padding: {'p' * (HEAD_LIMIT // 2)}\r\n"
    with _connect(server) as sock:
        sock.sendall(
            _request(headers=padding, close=False)
            + _request(headers=padding, close=False)
            + _request(headers=padding, close=True)
        )
        response = _read_all(sock)
    assert response.count(b"HTTP/1.1 200") == 3


def test_a_malformed_request_still_gets_400(server: Server) -> None:
    with _connect(server) as sock:
        _send_quietly(sock, b"NOT HTTP AT ALL\r\n\r\n")
        assert _status(_read_all(sock)) == 400


def test_the_server_log_names_the_refusal(server: Server) -> None:
    with _connect(server) as sock:
        _send_quietly(sock, _request(headers=f"X-Big: {'z' * (HEAD_LIMIT + 1)}\r\n"))
        _read_all(sock)
    time.sleep(0.2)
    assert f"Request head over {HEAD_LIMIT} bytes refused" in Path(server.log).read_text()


# -- slow clients --------------------------------------------------------------------
#
# The deadlines are seconds long in ``baton serve``; these tests run the same
# protocol, with deadlines a test can wait for, under uvicorn in this process.


class _QuickProtocol(CappedHttpToolsProtocol):
    head_timeout = 0.5
    body_idle_timeout = 0.5


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/slow`` works for 1.5 s after reading the body, ``/late`` for 1.5 s
    before reading it; every request is answered with its body's length."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/late":
        await asyncio.sleep(1.5)
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(1.5)
    body = str(size).encode()
    start: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-length", str(len(body)).encode())],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def quick() -> Iterator[tuple[str, int]]:
    """A server whose slow-client deadlines are half a second, capped at five
    connections as ``BATON_MAX_CONNECTIONS=5`` caps ``baton serve``."""
    port = free_port()
    config = uvicorn.Config(
        _app,
        host="127.0.0.1",
        port=port,
        http=_QuickProtocol,
        lifespan="off",
        limit_concurrency=5,
        timeout_keep_alive=3,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield ("127.0.0.1", port)
    server.should_exit = True
    thread.join(10)


def _open(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=10)


def _get(address: tuple[str, int]) -> int:
    with _open(address) as sock:
        sock.sendall(_request("/"))
        return _status(_read_all(sock))


def _post(path: str, size: int, close: bool = True) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    head = f"POST {path} HTTP/1.1\r\nHost: baton\r\nContent-Length: {size}\r\n{connection}\r\n"
    return head.encode()


def test_unfinished_heads_are_closed_and_free_their_slots(quick: tuple[str, int]) -> None:
    """A slow loris: heads begun and never ended hold every connection slot
    until the head deadline answers them 408 and closes them."""
    lorises = [_open(quick) for _ in range(5)]
    try:
        for sock in lorises:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: baton\r\n")
        time.sleep(0.1)
        assert _get(quick) == 503  # the cap is full
        answers = [_read_all(sock) for sock in lorises]  # each ends when closed
    finally:
        for sock in lorises:
            sock.close()
    assert all(_status(answer) == 408 for answer in answers)
    assert _get(quick) == 200


def test_a_connection_that_sends_nothing_is_closed(quick: tuple[str, int]) -> None:
    with _open(quick) as sock:
        started = time.monotonic()
        assert _read_all(sock) == b""  # closed without an answer, as an idle keep-alive
    assert time.monotonic() - started < 5


def test_a_stalled_body_gets_408(quick: tuple[str, int]) -> None:
    with _open(quick) as sock:
        sock.sendall(_post("/", 100) + b"half")
        started = time.monotonic()
        answer = _read_all(sock)
    assert _status(answer) == 408
    assert answer.count(b"HTTP/1.1") == 1
    assert time.monotonic() - started < 5


def test_a_slow_but_steady_body_is_served(quick: tuple[str, int]) -> None:
    """Ten bytes every 0.2 s for 2 s: longer than either deadline, but the
    body never pauses for the idle one."""
    with _open(quick) as sock:
        sock.sendall(_post("/", 100))
        for _ in range(10):
            time.sleep(0.2)
            sock.sendall(b"x" * 10)
        answer = _read_all(sock)
    assert _status(answer) == 200
    assert answer.endswith(b"\r\n\r\n100")


def test_a_request_being_answered_is_not_cut(quick: tuple[str, int]) -> None:
    """The app works for three times the deadlines after the body arrived."""
    with _open(quick) as sock:
        sock.sendall(_post("/slow", 4) + b"body")
        answer = _read_all(sock)
    assert _status(answer) == 200


def test_a_pipelined_head_does_not_cut_the_answer_before_it(quick: tuple[str, int]) -> None:
    with _open(quick) as sock:
        sock.sendall(_post("/slow", 4, close=False) + b"body" + b"GET / HTTP/1.1\r\nHost: b")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"\r\n\r\n4HTTP/1.1 408 " in answer  # then the unfinished head times out


def test_a_client_waiting_for_100_continue_is_not_timed_out(quick: tuple[str, int]) -> None:
    """``/late`` asks for the body after 1.5 s: the wait is the server's."""
    with _open(quick) as sock:
        sock.sendall(
            b"POST /late HTTP/1.1\r\nHost: baton\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"body")
        answer = _read_all(sock)
    assert _status(answer) == 200


def test_an_idle_kept_alive_connection_outlives_the_head_deadline(
    quick: tuple[str, int],
) -> None:
    """Between requests the keep-alive timeout (3 s here) applies, not the
    head's deadline."""
    with _open(quick) as sock:
        sock.sendall(_request("/", close=False))
        assert sock.recv(1024).startswith(b"HTTP/1.1 200 ")
        time.sleep(1.2)
        sock.sendall(_request("/"))
        assert _status(_read_all(sock)) == 200
