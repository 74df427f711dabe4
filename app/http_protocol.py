"""uvicorn's httptools protocol with bounds on the request head and on slow
clients.

httptools (llhttp) parses HTTP/1.1 in C, at a fraction of h11's CPU cost, but
neither it nor uvicorn bounds the request line and headers: httptools keeps a
header of any length in memory until it is complete. This protocol answers
``431 Request Header Fields Too Large`` and closes the connection when a head
grows past ``HEAD_LIMIT``: counted as it is parsed (the request line and each
header), and as it arrives (the reads that lie wholly inside an incomplete
head), so that one connection holds at most the limit and two reads.

Nor does uvicorn bound the time a client takes to send a request: its only
timer is for idle keep-alive connections, so a client that sends part of a
head or of a body, then nothing (a slow loris), holds its connection, and
under ``BATON_MAX_CONNECTIONS`` a slot of the cap, for ever. Here a head must
be complete within ``HEAD_TIMEOUT`` of its first byte (a new connection,
within ``HEAD_TIMEOUT`` of being opened), and a body must not pause for
``BODY_IDLE_TIMEOUT``; otherwise the client gets ``408 Request Timeout`` and
the connection closes. A body that keeps arriving, however slowly, is never cut
(``BATON_MAX_BODY_BYTES`` bounds it), nor is a request whose body has arrived
(the app is working on it), nor a wait that is the server's own (reading
paused while the app catches up, or a client waiting for ``100 Continue``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_LIMIT = 16 * 1024  # bytes of request line and headers, as h11's default
HEAD_TIMEOUT = 10.0  # seconds for a whole head: one or two packets for any real client
BODY_IDLE_TIMEOUT = 30.0  # seconds without a byte of an unfinished body

# The transport's view of the client, before uvicorn's proxy-headers middleware
# replaces ``scope["client"]`` with what X-Forwarded-For says (an ASGI scope
# extension: ``scope["extensions"][PEER] == {"client": (host, port)}``).
PEER = "baton.peer"

_TOO_LARGE = b"Request header fields too large."
_TIMED_OUT = b"Request timed out."


class _HeadTooLarge(Exception):
    pass


class CappedHttpToolsProtocol(HttpToolsProtocol):
    head_limit = HEAD_LIMIT
    head_timeout = HEAD_TIMEOUT
    body_idle_timeout = BODY_IDLE_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False  # between the start of a request and the end of its head
        self._events = 0  # heads started or completed, so far
        self._received = 0  # bytes of reads that lay wholly inside this head
        self._parsed = 0  # bytes of this head handed to us by the parser
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None  # the head's or the body's deadline
        self._body_seen = 0.0  # loop time of the last body bytes
        self._server_waited = False  # the body's deadline last found the server waiting

    # -- as it arrives -------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        inside, events = self._in_head, self._events
        super().data_received(data)  # a head refused while parsed ends in a 400, dropped below
        if self._timer is None and self._idle() and not self.transport.is_closing():
            # Bytes that start no request (blank lines between requests) cancel
            # uvicorn's keep-alive timer: the head's deadline replaces it.
            self._arm(self.head_timeout, self._head_timed_out)
        if self._refused or not (inside and self._in_head and self._events == events):
            return
        # The whole read belongs to a head that is still incomplete: httptools
        # holds it. (A read where a head starts or ends is measured as parsed.)
        self._received += len(data)
        if self._received > self.head_limit:
            self._refuse()

    # -- as it is parsed -----------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope.setdefault("extensions", {})[PEER] = {"client": self.client}
        self._in_head = True
        self._events += 1
        self._received = self._parsed = 0
        self._arm(self.head_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._events += 1
        # Until the message completes (at once, when it has no body).
        self._body_seen = self.loop.time()
        self._server_waited = False
        self._arm(self.body_idle_timeout, self._body_timed_out)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_seen = self.loop.time()  # cheaper than moving the timer each time
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection is another protocol's now
        super().handle_websocket_upgrade()

    def _count(self, size: int) -> None:
        self._parsed += size
        if self._parsed > self.head_limit:
            self._refuse()
            raise _HeadTooLarge  # stops the parser; uvicorn then answers 400, dropped below

    # -- the deadlines ---------------------------------------------------------------

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle(self) -> bool:
        """No request of this connection is being answered."""
        return self.cycle is None or self.cycle.response_complete

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if not self._idle():
            # The head of a pipelined request: the one before it is still
            # being answered, and is not cut. Looked at again later.
            self._arm(self.head_timeout, self._head_timed_out)
            return
        if not self._in_head:
            # Opened, or sent blank lines, and never began a request: a
            # browser's preconnect, say. Closed as an idle keep-alive is.
            self.transport.close()
            return
        self.logger.info("Request head not received in %g s; connection closed.", self.head_timeout)
        self._time_out()

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        now = self.loop.time()
        quiet = now - self._body_seen
        if self.flow.read_paused or cycle.waiting_for_100_continue or self._server_waited:
            # The client waits for us (the app has not read what it has, or
            # has not asked for the body yet), or did until moments ago: its
            # silence counts from the end of our wait, a whole period at least.
            self._server_waited = self.flow.read_paused or cycle.waiting_for_100_continue
            self._body_seen = now
            self._arm(self.body_idle_timeout, self._body_timed_out)
        elif quiet < self.body_idle_timeout:
            self._arm(self.body_idle_timeout - quiet, self._body_timed_out)
        elif cycle.response_started and not cycle.response_complete:
            # An answer is being written: let it finish, then look again.
            self._arm(self.body_idle_timeout, self._body_timed_out)
        elif cycle.response_complete:
            # Answered without the rest of its body; nothing is in flight.
            self.transport.close()
        else:
            self.logger.info(
                "Request body stalled for %g s; connection closed.", self.body_idle_timeout
            )
            # The app waiting for the body hears that the client is gone
            # (as uvicorn's connection_lost says it), and its answer, if it
            # makes one, goes nowhere: the 408 below is the only one.
            cycle.disconnected = True
            cycle.message_event.set()
            self._time_out()

    def _time_out(self) -> None:
        self._write_and_close(b"408 Request Timeout", _TIMED_OUT)

    # -- the answer ----------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    def _refuse(self) -> None:
        self._refused = True
        self.logger.warning("Request head over %d bytes refused.", self.head_limit)
        self._write_and_close(b"431 Request Header Fields Too Large", _TOO_LARGE)

    def _write_and_close(self, status: bytes, body: bytes) -> None:
        self._disarm()
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()
