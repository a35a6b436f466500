"""TMF `Error` bodies: the only shape an error ever leaves the gateway in."""

from __future__ import annotations

from http import HTTPStatus

import orjson
from starlette.responses import Response


class ApiError(Exception):
    """An error to answer with a TMF `Error` body and the given HTTP status."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.code = code or _default_code(status)
        self.headers = headers or {}
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")

    def body(self) -> dict[str, str]:
        body = {"@type": "Error", "code": self.code, "reason": self.reason}
        if self.message:
            body["message"] = self.message
        body["status"] = str(self.status)
        return body


def _default_code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.upper().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "ERROR"


def bad_request(reason: str, message: str | None = None) -> ApiError:
    return ApiError(400, reason, message, code="INVALID_QUERY")


def not_found(collection: str, ident: str) -> ApiError:
    return ApiError(404, "Resource not found", f"No {collection} with id {ident!r}")


def error_response(error: ApiError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )
