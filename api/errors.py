"""Domain errors to HTTP answers, in one table registered once on the app.

Every error body has the same shape, `WanggeError.to_dict()`: `error` (the class
name), `message` (for people) and whatever detail the error carries. Request
validation failures answer 400 in that shape too, with a message naming the
parameter, and nothing unexpected leaks a traceback to the client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gis.errors import (
    Conflict,
    CRSMismatch,
    Forbidden,
    ImportRejected,
    InfeasiblePlan,
    InvalidGeometry,
    InvalidInput,
    NotFound,
    WanggeError,
)

log = logging.getLogger("wangge.api")


class UploadTooLarge(WanggeError):
    """An uploaded file is bigger than the service accepts over HTTP."""


#: Seconds a client is asked to wait (Retry-After) when the store is unreachable.
RETRY_AFTER_UNAVAILABLE_S = 5


def unavailable_body() -> dict[str, Any]:
    """The 503 answer while the database cannot be reached."""
    return {
        "error": "DatabaseUnavailable",
        "message": "the database cannot be reached; nothing was written, "
        f"try again in a few seconds (Retry-After: {RETRY_AFTER_UNAVAILABLE_S})",
    }


#: Error class -> HTTP status. Subclasses are listed before their bases; the first
#: match in this order wins. ImportRejected stays 400 like the rest of InvalidInput:
#: the client sent a file it must fix, and `problems` says where.
STATUS: dict[type[WanggeError], int] = {
    NotFound: 404,
    Forbidden: 403,
    ImportRejected: 400,
    InvalidGeometry: 400,
    CRSMismatch: 400,
    InvalidInput: 400,
    Conflict: 409,
    UploadTooLarge: 413,
    InfeasiblePlan: 422,
}


def status_for(error: WanggeError) -> int:
    """The status code for a domain error (500 for a class the table does not know)."""
    for cls, status in STATUS.items():
        if isinstance(error, cls):
            return status
    return 500


def invalid_parameter(
    name: str, problem: str, *, location: str = "query", value: Any = None
) -> InvalidInput:
    """An InvalidInput shaped like a request-validation failure, for checks done by hand."""
    problems = [_problem(location, name, problem, value)]
    return InvalidInput(f"{_describe(location, name)}: {problem}", field=name, problems=problems)


# ------------------------------------------------------------- validation


_LOCATIONS = {
    "query": "query parameter",
    "path": "path parameter",
    "header": "header",
    "cookie": "cookie",
    "body": "body field",
}


def _describe(location: str, name: str) -> str:
    return f"{_LOCATIONS.get(location, location)} {name}".strip()


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _plain_problem(error: dict[str, Any]) -> str:
    """Pydantic's error as a short 'must be …' phrase where we know the type."""
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    bounds = {
        "less_than_equal": ("≤", "le"),
        "greater_than_equal": ("≥", "ge"),
        "less_than": ("<", "lt"),
        "greater_than": (">", "gt"),
    }
    if kind in bounds:
        sign, key = bounds[kind]
        return f"must be {sign} {_number(ctx.get(key))}"
    if kind == "missing":
        return "is required"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be an integer"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected')}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return f"must be at least {ctx.get('min_length')} characters"
    message = str(error.get("msg", "is invalid"))
    return message[:1].lower() + message[1:]


def _problem(location: str, name: str, problem: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"location": location, "parameter": name, "problem": problem}
    # Echo only scalars: an UploadFile or a parsed body is no use in an error body.
    if isinstance(value, str | int | float | bool):
        out["input"] = value
    return out


def _validation_body(exc: RequestValidationError) -> dict[str, Any]:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        location = loc[0] if loc else ""
        name = ".".join(loc[1:]) or location
        problems.append(_problem(location, name, _plain_problem(error), error.get("input")))
    message = "; ".join(
        f"{_describe(p['location'], p['parameter'])}: {p['problem']}" for p in problems
    )
    return InvalidInput(message or "invalid request", problems=problems).to_dict()


# --------------------------------------------------------------- handlers


async def _on_domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WanggeError)
    status = status_for(exc)
    if status >= 500:
        log.error("unmapped domain error", exc_info=exc)
    return JSONResponse(exc.to_dict(), status_code=status)


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(_validation_body(exc), status_code=400)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in the common shape."""
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    message = str(exc.detail)
    if exc.status_code == 404 and message == phrase:
        message = f"no such path {request.url.path}; the API is described at /docs"
    elif exc.status_code == 405 and message == phrase:
        message = f"{request.method} is not allowed on {request.url.path}"
    body = {"error": phrase.replace(" ", "").replace("-", ""), "message": message}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _on_out_of_range(request: Request, exc: Exception) -> JSONResponse:
    """A number the store cannot hold (an offset of 10^19, an id past bigint) is the
    client's mistake, answered 400; the route should have bounded the parameter, so
    the log says which one slipped through."""
    log.warning("out-of-range value reached the store on %s: %s", request.url.path, exc)
    body = InvalidInput(
        "a number in the request is out of range (too large for the store); use a smaller value"
    ).to_dict()
    return JSONResponse(body, status_code=400)


async def _on_database_error(_request: Request, exc: Exception) -> JSONResponse:
    """A store that went away answers 503 (try again), not 500; anything else is a bug."""
    from gis.db.engine import store_unavailable

    if isinstance(exc, sa.exc.DataError):  # e.g. "bigint out of range"
        return await _on_out_of_range(_request, exc)

    if store_unavailable(exc):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return JSONResponse(
            unavailable_body(),
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
        )
    log.error("database error", exc_info=exc)
    return await _on_unexpected_error(_request, exc)


async def _on_unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the server log, never to the client: Starlette re-raises
    # the exception after this answer is sent, and the server logs it there once.
    body = {"error": "InternalError", "message": "internal server error; see the server log"}
    return JSONResponse(body, status_code=500)


def register_error_handlers(app: FastAPI) -> None:
    """Install the table's handlers; call once from the app factory."""
    app.add_exception_handler(WanggeError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    # The pool's TimeoutError is not a DBAPIError: both are registered.
    app.add_exception_handler(sa.exc.DBAPIError, _on_database_error)
    app.add_exception_handler(sa.exc.TimeoutError, _on_database_error)
    app.add_exception_handler(sa.exc.DisconnectionError, _on_database_error)
    # SQLite's driver raises OverflowError itself for an integer past 64 bits.
    app.add_exception_handler(OverflowError, _on_out_of_range)
    app.add_exception_handler(Exception, _on_unexpected_error)
