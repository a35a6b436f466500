"""The HTTP server's own refusals, as TMF Errors too.

uvicorn answers a request its parser cannot read (a malformed request line, a method the
parser does not know, a raw NUL in the target, a URL past its bound) itself, before the
application sees it, with a plain-text `400`. This is uvicorn's httptools protocol with
that one answer written as a TMF Error, so no body the gateway sends is anything else.
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import ApiError

_BODY = orjson.dumps(
    ApiError(
        400, "Invalid HTTP request", "The request cannot be read as HTTP/1.1", code="BAD_REQUEST"
    ).body()
)


class TmfHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), answering unreadable requests in TMF terms."""

    def send_400_response(self, msg: str) -> None:
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(_BODY)).encode("ascii") + b"\r\n",
            b"x-content-type-options: nosniff\r\n",
            b"cache-control: no-store\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + _BODY)
        self.transport.close()
