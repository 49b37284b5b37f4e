"""Payload models of the built-in job types, shared by the executor and the API.

The executor parses a payload with these models before running a job; the API runs the same check
at submit time, so a bad payload is a 422 naming the field instead of a job that fails later. One
definition keeps the two from drifting apart.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUILTIN_TYPES = ("noop", "sleep", "shell", "python", "http")
"""Job types every executor handles without user code."""


class _Payload(BaseModel):
    # strict: "false" must not silently become False for `shell`; forbid: a typo such as "shel"
    # must fail loudly instead of running with defaults.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


M = TypeVar("M", bound=BaseModel)


class PayloadError(ValueError):
    """A payload that does not fit its model; ``problems`` holds one message per finding."""

    def __init__(self, problems: list[str], *, per_field: bool) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        # False when the payload was not even an object (there are no fields to name).
        self.per_field = per_field


def parse_payload(model: type[M], payload: Any) -> M:
    """Validate ``payload`` (``None`` counts as ``{}``) against ``model``; raise PayloadError."""
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise PayloadError([f"payload must be a JSON object, got {type(payload).__name__}"], per_field=False)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = [
            f"payload.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            if err["loc"]
            else f"payload: {err['msg']}"
            for err in exc.errors(include_url=False)
        ]
        raise PayloadError(problems, per_field=True) from None


# --- sleep -----------------------------------------------------------------------------------


class SleepPayload(_Payload):
    seconds: float = Field(ge=0)


# --- subprocesses (shell, python) ------------------------------------------------------------


class _ProcessPayload(_Payload):
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    inherit_env: bool = True


class ShellPayload(_ProcessPayload):
    command: list[str] | str
    shell: bool = False

    @field_validator("command")
    @classmethod
    def _non_empty(cls, v: list[str] | str) -> list[str] | str:
        if not v or (isinstance(v, str) and not v.strip()):
            raise ValueError("must be a non-empty string or list of strings")
        return v

    @model_validator(mode="after")
    def _string_for_shell(self) -> ShellPayload:
        if self.shell and not isinstance(self.command, str):
            # Joining a list would quote away exactly the shell syntax the caller asked for.
            raise ValueError("command must be a string when shell is true")
        return self


class PythonPayload(_ProcessPayload):
    script: str | None = None
    path: str | None = None
    args: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self) -> PythonPayload:
        if (self.script is None) == (self.path is None):
            raise ValueError("exactly one of script or path is required")
        return self


# --- http ------------------------------------------------------------------------------------

_STATUS_RE = re.compile(r"[1-5](?:xx|\d\d)", re.IGNORECASE)
_METHOD_RE = re.compile(r"[A-Z]{1,16}")


class HttpPayload(_Payload):
    url: str
    method: str = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(None, alias="json")
    body: str | None = None
    timeout_s: float = Field(30.0, gt=0, le=86400)
    expect_status: int | str | list[int | str] = "2xx"
    follow_redirects: bool = False

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if not _METHOD_RE.fullmatch(v.upper()):
            raise ValueError("must be an HTTP method such as GET or POST")
        return v.upper()

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            # httpx would raise a bare UnicodeEncodeError mid-request; say which header instead.
            if not key.isascii() or not value.isascii():
                raise ValueError(f"header {key!r}: names and values must be ASCII")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        # urllib, not httpx: this module is imported by the API, which must not need an HTTP client.
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - reading it is what validates the port (0-65535)
        except ValueError as exc:
            raise ValueError(f"invalid URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("invalid URL: no host")
        return v

    @field_validator("expect_status")
    @classmethod
    def _statuses(cls, v: int | str | list[int | str]) -> int | str | list[int | str]:
        items = v if isinstance(v, list) else [v]
        if not items:
            raise ValueError("must name at least one status")
        for item in items:
            ok = 100 <= item <= 599 if isinstance(item, int) else bool(_STATUS_RE.fullmatch(item))
            if not ok:
                raise ValueError(f"{item!r} is not a status code (e.g. 200) or class (e.g. '2xx')")
        return v

    @model_validator(mode="after")
    def _one_body(self) -> HttpPayload:
        if self.body is not None and "json_body" in self.model_fields_set:
            raise ValueError("give either json or body, not both")
        return self


# --- by job type -----------------------------------------------------------------------------

PAYLOAD_MODELS: dict[str, type[_Payload] | None] = {
    "noop": None,  # any payload: it is echoed back
    "sleep": SleepPayload,
    "shell": ShellPayload,
    "python": PythonPayload,
    "http": HttpPayload,
}
"""Built-in job type -> its payload model (None: any payload is accepted)."""

assert tuple(PAYLOAD_MODELS) == BUILTIN_TYPES


def payload_problems(job_type: str, payload: Any) -> list[str]:
    """What is wrong with ``payload`` for built-in ``job_type``; empty if fine or not built-in."""
    model = PAYLOAD_MODELS.get(job_type)
    if model is None:
        return []
    try:
        parse_payload(model, payload)
    except PayloadError as exc:
        return exc.problems
    return []
