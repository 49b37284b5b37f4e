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


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _refused(_: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=http_status(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc)}, status_code=422)

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(ConnectionError)
    @app.exception_handler(OSError)
    async def _db_down(_: Request, exc: Exception) -> JSONResponse:
        if _is_bad_value(exc):
            # e.g. a NUL byte PostgreSQL cannot store: the request's fault, not the database's.
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
            return JSONResponse({"detail": f"invalid value: {reason}"}, status_code=422)
        reason = str(exc).splitlines()[0][:200]
        return JSONResponse({"detail": f"database unavailable: {reason}"}, status_code=503)

    @app.exception_handler(NatsError)
    async def _nats_down(_: Request, exc: NatsError) -> JSONResponse:
        return JSONResponse({"detail": f"NATS unavailable: {exc or type(exc).__name__}"}, status_code=503)
