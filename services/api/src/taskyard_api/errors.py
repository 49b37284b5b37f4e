"""Turning failures into one-line 4xx/503 answers that name the field or the dependency."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nats.errors import Error as NatsError
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from .failures import DomainError, Forbidden, Invalid, NotFound, Refused, StorageFull, TooLarge, Unavailable

# The one place a domain refusal becomes an HTTP status.
HTTP_STATUS: dict[type[DomainError], int] = {
    NotFound: 404,
    Forbidden: 403,
    Refused: 409,
    TooLarge: 413,
    Invalid: 422,
    Unavailable: 503,
    StorageFull: 507,
    DomainError: 400,  # a refusal of no kind above (keep last: every kind matches it)
}


def http_status(exc: DomainError) -> int:
    return next(code for kind, code in HTTP_STATUS.items() if isinstance(exc, kind))


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def validation_detail(exc: RequestValidationError) -> str:
    messages = []
    for err in exc.errors()[:10]:
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            msg = f"malformed JSON ({err.get('ctx', {}).get('error', 'decode error')})"
        messages.append(f"{_field(tuple(err.get('loc', ())))}: {msg}")
    return "; ".join(messages)


def _is_bad_value(exc: Exception) -> bool:
    """SQLSTATE class 22 (data exception) or SQLAlchemy's DataError: bad input, not an outage."""
    sqlstate = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
    return isinstance(exc, DataError) or sqlstate.startswith("22")


def _db_down(exc: Exception) -> tuple[int, str]:
    if _is_bad_value(exc):
        # e.g. a NUL byte PostgreSQL cannot store: the request's fault, not the database's.
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        return 422, f"invalid value: {reason}"
    reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]  # (a bare TimeoutError has no text)
    return 503, f"database unavailable: {reason}"


def _nats_down(exc: Exception) -> tuple[int, str]:
    return 503, f"NATS unavailable: {exc or type(exc).__name__}"


def _domain(exc: Exception) -> tuple[int, str]:
    assert isinstance(exc, DomainError)
    return http_status(exc), exc.message


def _invalid(exc: Exception) -> tuple[int, str]:
    assert isinstance(exc, RequestValidationError)
    return 422, validation_detail(exc)


# What each kind of failure answers; the nearest kind in the exception's MRO applies, as Starlette
# picks an exception handler.
_ANSWERS = {
    DomainError: _domain,
    RequestValidationError: _invalid,
    OperationalError: _db_down,
    DBAPIError: _db_down,
    ConnectionError: _db_down,
    OSError: _db_down,
    NatsError: _nats_down,
}


def refusal(exc: Exception) -> tuple[int, str] | None:
    """The status and one-line detail the api answers for `exc`; None for a failure it does not
    know (a bug: a 500). The exception handlers below and a lease call served for another api
    process (lease_relay) answer the same."""
    for kind in type(exc).__mro__:
        if (answer := _ANSWERS.get(kind)) is not None:
            return answer(exc)
    return None


async def _answer(_: Request, exc: Exception) -> JSONResponse:
    found = refusal(exc)
    assert found is not None  # installed only for the kinds refusal knows
    status, detail = found
    return JSONResponse({"detail": detail}, status_code=status)


def install(app: FastAPI) -> None:
    for kind in _ANSWERS:
        app.add_exception_handler(kind, _answer)
