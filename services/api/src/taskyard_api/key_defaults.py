"""Concurrency and rate keys a job gets from the api's configuration when it names none.

TASKYARD_API_GATE_DEFAULTS is JSON: {"types": {type: Default}, "queues": {queue: Default}}. A
job's own `concurrency` / `rate` wins; else its type's default; else its queue's. A default's key
is a template over the job's fields (`tenant:{labels.tenant}`), and its limit may differ per
expanded key (`"limits": {"tenant:premium": 10}`, `limit` for the others). A job that lacks a
field its template names gets no key from that default (it is not throttled with strangers).
"""

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from .key_rules import Unfilled, default_limit, expand
from .schemas import ConcurrencyStrategy, GateKeyName

MAX_KEY = 256


class ConcurrencyDefault(BaseModel):
    model_config = {"extra": "forbid"}
    key: GateKeyName = Field(description="A template: `{labels.tenant}`, `{type}`, `{queue}`, `{payload.x}`")
    limit: int = Field(1, ge=1, le=100_000)
    limits: dict[
        Annotated[str, StringConstraints(max_length=MAX_KEY)], Annotated[int, Field(ge=1, le=100_000)]
    ] = {}
    strategy: ConcurrencyStrategy = "queue"
    group: GateKeyName | None = None


class RateDefault(BaseModel):
    model_config = {"extra": "forbid"}
    key: GateKeyName
    per_s: float = Field(gt=0, le=100_000)
    burst: int = Field(1, ge=1, le=100_000)


class Default(BaseModel):
    model_config = {"extra": "forbid"}
    concurrency: ConcurrencyDefault | None = None
    rate: RateDefault | None = None


class GateDefaults(BaseModel):
    model_config = {"extra": "forbid"}
    types: dict[str, Default] = {}
    queues: dict[str, Default] = {}

    def fill(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The gate columns a job record (`fields`: its columns so far) gets from the defaults."""
        out: dict[str, Any] = {}
        chosen = [d for d in (self.types.get(fields["type"]), self.queues.get(fields["queue"])) if d]
        if fields.get("concurrency_key") is None:
            for default in chosen:
                if default.concurrency is None:
                    continue
                spec = default.concurrency
                try:
                    key = expand(spec.key, fields)
                except Unfilled:
                    break  # the nearest default applies or none does
                out["concurrency_key"] = key
                out["concurrency"] = {
                    "limit": default_limit(spec.model_dump(), key),
                    "strategy": spec.strategy,
                    "group": spec.group,
                }
                break
        if fields.get("rate_key") is None:
            for default in chosen:
                if default.rate is None:
                    continue
                try:
                    out["rate_key"] = expand(default.rate.key, fields)
                except Unfilled:
                    break
                out["rate"] = {"per_s": default.rate.per_s, "burst": default.rate.burst}
                break
        return out
