"""What the OpenAPI document says beyond the routes' own signatures: the one error shape, the
statuses each route answers, authentication, settings-dependent bounds, and `Allow` on a 405."""

import re
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorAnswer(BaseModel):
    """Every 4xx and 503 answer: one line naming the field (by JSON path) or the dependency."""

    detail: str = Field(examples=["payload.items[3].name: NUL character not allowed"])


_WHY = {
    400: "The request cannot be read",
    401: "Missing, unknown or revoked API key",
    403: "The key's role may not do this",
    404: "Not found",
    409: "Conflicts with the current state (already final, decided concurrently, queue limit reached)",
    413: "Too large (payload bytes, batch items, or file bytes over the configured limit)",
    422: (
        "Invalid input, named by field: schema violations, unknown job types, bad built-in payloads, "
        "NUL characters, NaN/Infinity, JSON nested deeper than 64 levels"
    ),
    429: "Rate limited (submissions per key, or failed key attempts per client); see Retry-After",
    503: "NATS or the database is unavailable; retry shortly",
    507: "The artifact store is full (TASKYARD_ARTIFACTS_BUCKET_MAX_BYTES)",
}
COMMON = (401, 403, 422, 429, 503)
"""What any authenticated route may answer: auth, input checks, throttling, a dependency away."""


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: COMMON plus `codes`, each with the ErrorAnswer shape."""
    return {code: {"model": ErrorAnswer, "description": _WHY[code]} for code in sorted({*COMMON, *codes})}


NO_NUL = "^[^\u0000]*$"
"""The input checks refuse NUL characters in every string (input_checks); free strings say so."""


JSON_VALUE_SCHEMA = {
    "description": "Any JSON value; strings and keys without NUL characters, numbers finite",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "number"},
        {"type": "string", "pattern": NO_NUL},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        },
    ],
}


def _no_nul(schema: Any) -> None:
    """Give every string without a pattern, enum or format in `schema` the NO_NUL pattern, and
    every field marked schemas.JSON_VALUE the JsonValue schema."""
    if isinstance(schema, list):
        for item in schema:
            _no_nul(item)
    elif isinstance(schema, dict):
        if schema.get("type") == "string" and not {"pattern", "enum", "format", "const"} & schema.keys():
            schema["pattern"] = NO_NUL
        if schema.pop("x-json-value", False):  # schemas.JSON_VALUE: pydantic cannot emit the $ref
            schema["$ref"] = "#/components/schemas/JsonValue"
        for value in schema.values():
            _no_nul(value)


def _link_submitted_job(doc: dict[str, Any]) -> None:
    """Links from a submit's (and a schedule's) answer to the routes taking its `id` (clients and
    stateful fuzzers)."""
    paths = doc["paths"]
    links = {
        operation["operationId"]: {
            "operationId": operation["operationId"],
            "parameters": {"job_id": "$response.body#/id"},
        }
        for path, operations in paths.items()
        if path.startswith("/api/v1/jobs/{job_id}")
        for operation in operations.values()
    }
    for status in ("200", "201"):
        paths["/api/v1/jobs"]["post"]["responses"][status]["links"] = links
    schedule_links = {
        operation["operationId"]: {
            "operationId": operation["operationId"],
            "parameters": {"schedule_id": "$response.body#/id"},
        }
        for path, operations in paths.items()
        if path.startswith("/api/v1/schedules/{schedule_id}")
        for operation in operations.values()
    }
    if created := paths.get("/api/v1/schedules", {}).get("post"):
        created["responses"]["201"]["links"] = schedule_links


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: `Bearer ty_...`"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    doc["security"] = [{"bearer": []}, {"apiKey": []}]
    # Settings-dependent bounds are stated as the running server enforces them.
    settings = app.state.settings
    schemas = components.get("schemas", {})
    if "JobBatch" in schemas:
        schemas["JobBatch"]["properties"]["jobs"]["maxItems"] = settings.max_batch
    schemas["JsonValue"] = JSON_VALUE_SCHEMA
    for name, schema in schemas.items():
        if name != ErrorAnswer.__name__:
            _no_nul(schema)
    for operations in doc["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                _no_nul(parameter["schema"])
    _link_submitted_job(doc)
    app.openapi_schema = doc
    return doc


def _allowed(app: FastAPI) -> list[tuple[re.Pattern[str], str]]:
    """(path regex, Allow value) per documented path: its methods, and HEAD where GET is (Starlette)."""
    if not hasattr(app.state, "allowed_methods"):
        table = []
        for template, operations in app.openapi()["paths"].items():
            methods = {m.upper() for m in operations}
            if "GET" in methods:
                methods.add("HEAD")
            regex = re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$")
            table.append((regex, ", ".join(sorted(methods))))
        app.state.allowed_methods = table
    return app.state.allowed_methods


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 405:
        # Starlette names only the methods of the first route matching the path; list them all.
        for regex, allow in _allowed(request.app):
            if regex.match(request.url.path):
                exc.headers = {**(exc.headers or {}), "Allow": allow}
                break
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    """Serve the document described above and complete 405 answers."""
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
