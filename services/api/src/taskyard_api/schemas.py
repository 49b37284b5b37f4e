"""Request and response bodies of the REST API."""

import json
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from taskyard_common.schemas import Backoff, Priority
from taskyard_common.topology import QUEUE_NAME

JOB_TYPE = r"^[A-Za-z0-9_.:-]{1,128}$"
QUEUE = QUEUE_NAME.pattern  # a queue name is part of subjects and consumer names
MAX_DEPTH = 32


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping early past `limit` (no recursion blow-up)."""
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


class JobCreate(BaseModel):
    model_config = {"extra": "forbid"}

    type: str = Field(pattern=JOB_TYPE)
    payload: Any = None
    queue: str = Field("default", pattern=QUEUE)
    priority: Priority = "normal"
    timeout_s: float = Field(3600.0, gt=0, le=7 * 86400)
    max_attempts: int = Field(3, ge=1, le=100)
    backoff: Backoff = Field(default_factory=Backoff)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)

    @field_validator("payload")
    @classmethod
    def _payload_shape(cls, value: Any) -> Any:
        if _depth(value, MAX_DEPTH) > MAX_DEPTH:
            raise ValueError(f"payload nests deeper than {MAX_DEPTH} levels")
        return value

    @field_validator("labels")
    @classmethod
    def _labels_shape(cls, value: dict[str, str]) -> dict[str, str]:
        for k, v in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", k):
                raise ValueError(f"label name {k!r} must match [A-Za-z0-9_.-]{{1,63}}")
            if len(v) > 256 or "\x00" in v:
                raise ValueError(f"label {k!r}: value longer than 256 chars or contains NUL")
        return value

    def payload_size(self) -> int:
        return len(json.dumps(self.payload, separators=(",", ":")).encode())


class JobBatch(BaseModel):
    model_config = {"extra": "forbid"}
    jobs: list[JobCreate] = Field(min_length=1)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class KeyCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1, max_length=100)
    role: str = Field(pattern=r"^(viewer|submitter|admin)$")
