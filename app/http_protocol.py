"""uvicorn's httptools protocol with a cap on the request head.

httptools (llhttp) parses HTTP/1.1 in C, at a fraction of h11's CPU cost, but
neither it nor uvicorn bounds the request line and headers: httptools keeps a
header of any length in memory until it is complete. This protocol answers
``431 Request Header Fields Too Large`` and closes the connection when a head
grows past ``HEAD_LIMIT``: counted as it is parsed (the request line and each
header), and as it arrives (the reads that lie wholly inside an incomplete
head), so that one connection holds at most the limit and two reads.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_LIMIT = 16 * 1024  # bytes of request line and headers, as h11's default

_TOO_LARGE = b"Request header fields too large."


class _HeadTooLarge(Exception):
    pass


class CappedHttpToolsProtocol(HttpToolsProtocol):
    head_limit = HEAD_LIMIT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False  # between the start of a request and the end of its head
        self._events = 0  # heads started or completed, so far
        self._received = 0  # bytes of reads that lay wholly inside this head
        self._parsed = 0  # bytes of this head handed to us by the parser
        self._refused = False

    # -- as it arrives -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        inside, events = self._in_head, self._events
        super().data_received(data)  # a head refused while parsed ends in a 400, dropped below
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
        self._in_head = True
        self._events += 1
        self._received = self._parsed = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._events += 1
        super().on_headers_complete()

    def _count(self, size: int) -> None:
        self._parsed += size
        if self._parsed > self.head_limit:
            self._refuse()
            raise _HeadTooLarge  # stops the parser; uvicorn then answers 400, dropped below

    # -- the answer ----------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    def _refuse(self) -> None:
        self._refused = True
        self.logger.warning("Request head over %d bytes refused.", self.head_limit)
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(_TOO_LARGE)).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n" + _TOO_LARGE
        )
        self.transport.close()
