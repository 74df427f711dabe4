"""The HTTP/1.1 server ``baton serve`` runs: httptools with a cap on request
heads, over a real socket (the in-process test client has no parser)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.http_protocol import HEAD_LIMIT
from tests.servers import Server, serving


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
