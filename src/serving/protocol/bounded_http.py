"""uvicorn's httptools protocol with a bound on a request's line and headers.

httptools buffers a request line and header values until they end, however long: measured
here, one connection sending a 200 MB header grew the replica by 200 MB in 0.2 s. This
protocol counts the bytes that arrive while a request's head is incomplete and answers 431
(and closes) once they exceed ``MAX_HEAD_BYTES``; the application's own check (``http.
MAX_HEADER_BYTES``, 431 with ``{"error": ...}``) handles heads that end below it.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.protocol.http_messages import MAX_HEADER_BYTES

MAX_HEAD_BYTES = MAX_HEADER_BYTES + 16 * 1024
"""Headers plus a request line of up to 16 KiB."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._head_done = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_done or self.transport.is_closing():
            return
        # still inside a head after this chunk: it all counts (at most one chunk over the bound is buffered)
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_done = False

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._head_bytes = 0
        super().on_headers_complete()

    def _refuse(self) -> None:
        body = json.dumps({"error": f"request line and headers exceed {MAX_HEAD_BYTES} bytes"}).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        self.transport.close()
