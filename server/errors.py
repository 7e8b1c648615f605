"""One error shape for the whole API: RFC 9457 problem+json with a stable `code`.

Domain code raises `ProblemError` subclasses (or `problem(...)`); one handler renders them.
Messages never carry templates, scores or secrets.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from apiflask import APIFlask, HTTPError
from flask import Response, json, request

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ProblemError(HTTPError):
    """An API error with a stable machine-readable code."""

    status_code = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        title: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            status or self.status_code,
            message=title or self.title,
            detail=detail,
            headers=headers,
            extra_data={"code": code or self.code, **(extra or {})},
        )


def problem_document(
    status: int, code: str, title: str, detail: Any = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://facepay.dev/problems/{code}",
        "title": title,
        "status": status,
        "code": code,
        "instance": request.path if request else None,
    }
    if detail:
        body["detail"] = detail if isinstance(detail, str) else "The request is not valid."
        if not isinstance(detail, str):
            body["errors"] = detail
    body.update(extra)
    return body


def error_document(error: HTTPError) -> dict[str, Any]:
    """The problem document of an API error, as the error handler renders it."""
    extra = dict(error.extra_data or {})
    code = str(extra.pop("code", _CODES_BY_STATUS.get(error.status_code, "error")))
    return problem_document(
        error.status_code, code, error.message or "Error", error.detail or None, **extra
    )


def problem_response(
    status: int, code: str, title: str, detail: Any = None, **extra: Any
) -> Response:
    return json_response(status, problem_document(status, code, title, detail, **extra))


class Unavailable(ProblemError):
    """Something the request needs is down for the moment (the database, the shopper key
    store, the gallery): 503 with Retry-After. Nothing of the request was done, so the client
    sends it again as it was; an idempotency key is not spent on it (it is not stored as the
    key's answer)."""

    status_code = 503
    code = "unavailable"
    title = "Temporarily unavailable"

    def __init__(self, detail: str, *, code: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(detail, code=code, headers={"Retry-After": str(retry_after_s)})


class JSONTooDeep(ProblemError):
    status_code = 400
    code = "json_too_deep"
    title = "The JSON body is nested too deeply"


def refuse_deep_json() -> None:
    """JSON too deeply nested for Python's parser is bad input (400), not a server error: the
    parser raises RecursionError, which neither Flask nor webargs treat as a decoding failure.
    Parsed once more here (microseconds for the API's small bodies); other decoding errors
    are left to the request's own validation."""
    if not request.is_json:
        return
    try:
        json.loads(request.get_data(cache=True))
    except RecursionError:
        raise JSONTooDeep("nested too deeply to parse") from None
    except ValueError:
        return


def json_response(status: int, body: dict[str, Any]) -> Response:
    """A JSON response; problem+json when `status` is an error."""
    mimetype = PROBLEM_JSON if status >= 400 else "application/json"
    return Response(json.dumps(body), status=status, mimetype=mimetype)


def _database_unavailable(error: Exception) -> bool:
    """A database connection that failed or was lost (not a bug in a query)."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    return isinstance(error, OperationalError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    )


def register_error_handlers(app: APIFlask) -> None:
    def _render(error: HTTPError) -> Response:
        response = json_response(error.status_code, error_document(error))
        for name, value in dict(error.headers or {}).items():
            response.headers[name] = value
        return response

    app.error_processor(_render)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        if isinstance(error, HTTPError):
            return _render(error)
        from werkzeug.exceptions import HTTPException

        if isinstance(error, HTTPException):
            status = error.code or 500
            return problem_response(status, _CODES_BY_STATUS.get(status, "error"), error.name)
        if _database_unavailable(error):
            # Down, restarting, unreachable, or locked past the busy timeout: the client sends
            # the request again (an idempotent request with the same key: if this attempt did
            # commit after all, the retry gets its stored answer).
            logger.warning(
                "database unavailable on %s %s: %s",
                request.method,
                request.path,
                type(getattr(error, "orig", None) or error).__name__,
            )
            response = problem_response(
                503,
                "database_unavailable",
                "The database is unavailable",
                "the database did not answer; send the request again",
            )
            response.headers["Retry-After"] = "1"
            return response
        # The traceback's frames are logged, not the exception's message: it could quote
        # request data, and request data can hold templates.
        frames = "".join(traceback.format_tb(error.__traceback__))
        logger.error(
            "unhandled %s on %s %s\n%s", type(error).__name__, request.method, request.path, frames
        )
        return problem_response(500, "internal_error", "Internal server error")
