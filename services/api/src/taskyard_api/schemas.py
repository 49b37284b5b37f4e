"""Request and response bodies of the REST API."""

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from taskyard_common.artifact_names import BadName, normalise
from taskyard_common.payloads import BUILTIN_TYPES
from taskyard_common.schemas import Backoff, Priority
from taskyard_common.topology import QUEUE_NAME

JOB_TYPE = r"^[A-Za-z0-9_.:-]{1,128}$"
QUEUE = QUEUE_NAME.pattern  # a queue name is part of subjects and consumer names
MAX_DEPTH = 32
LABEL_NAME = r"^[A-Za-z0-9_.-]{1,63}$"
LabelName = Annotated[str, StringConstraints(pattern=LABEL_NAME)]
LabelValue = Annotated[str, StringConstraints(max_length=256)]
JSON_VALUE: JsonDict = {"x-json-value": True}
"""Marks an Any field: api_doc makes it a JsonValue (no NUL characters, as the input checks enforce)."""
TYPE_RULE = (
    f"A built-in type ({', '.join(BUILTIN_TYPES)}; its payload must fit that type's model, see "
    "docs/api.md) or a type some worker has registered (its handler names, read from worker "
    "heartbeats). Any other type is a 422 `type: unknown job type`."
)


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


class BackoffIn(Backoff):
    """Backoff as submitted: unknown fields are a typo, not a newer sender (as they may be on NATS)."""

    model_config = {"extra": "forbid"}


NotifyOutcome = Literal["succeeded", "failed", "dead", "waiting"]
DEFAULT_NOTIFY_ON: tuple[NotifyOutcome, ...] = ("failed", "dead")


class NotifySpec(BaseModel):
    """A webhook for a job's outcomes: a signed POST to `url` (docs/api.md, "Job notifications")."""

    model_config = {"extra": "forbid"}
    # Explicit ranges, no `\s`: Rust's regex (pydantic) and Python's disagree on what it covers.
    url: str = Field(pattern=r"^https?://[^\x00-\x20\x7f]{1,2000}$", description="http(s) URL to POST to")
    on: list[NotifyOutcome] = Field(
        default_factory=lambda: list(DEFAULT_NOTIFY_ON),
        min_length=1,
        max_length=4,
        description="Outcomes to tell: `waiting` is a job paused for a person",
    )


# What the schema can say of a file name; the rest (no `..` segment, no `C:` drive, segments of
# at most 255 bytes, not only `.`/`/`) is stated in words (docs/artifacts.md) and checked by
# artifact_names.normalise, as a 422 naming the field.
FILE_NAME = r"^[^/\\\x00-\x1f\x7f][^\\\x00-\x1f\x7f]*$"
NAME_RULE = (
    "A relative path: no leading `/`, no `..` segment, no backslash, no control characters, no "
    "`C:` drive, segments of at most 255 bytes (docs/artifacts.md); else a 422 naming the field."
)


class InputRef(BaseModel):
    """An uploaded file (PUT /api/v1/inputs/{sha256}) and where the job sees it."""

    model_config = {"extra": "forbid"}
    path: str = Field(
        min_length=1,
        max_length=1024,
        description="Where the job finds the file in its working directory. " + NAME_RULE,
        json_schema_extra={"pattern": FILE_NAME},
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="The upload's sha256 (64 lower-case hex)")
    size: int = Field(0, ge=0, description="Ignored: the stored size is used")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _name(value)


def _name(value: str) -> str:
    try:
        return normalise(value)
    except BadName as exc:
        raise ValueError(str(exc)) from None


OutputGlob = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1024),
    AfterValidator(_name),
    Field(
        description="A glob relative to the working directory. " + NAME_RULE,
        # Documented, not enforced as a pattern: normalise's message says which rule broke.
        json_schema_extra={"pattern": FILE_NAME},
    ),
]


NODE_NAME = r"^[A-Za-z0-9_.:-]{1,128}$"
NodeName = Annotated[str, StringConstraints(pattern=NODE_NAME)]
# A join may wait for a whole fan-out (a 1 → 998 → 1 workflow's last node has 998 parents).
MAX_PARENTS = 10_000


class Dependency(BaseModel):
    """Run after `job` ended as `on` asks: `succeeded` (else this job is skipped) or `finished`."""

    model_config = {"extra": "forbid"}
    job: NodeName = Field(description="A job id, or the `name` of a job in the same request.")
    on: Literal["succeeded", "finished"] = "succeeded"


def _rfc3339_text(value: Any) -> Any:
    # Pydantic would read a number as epoch seconds; the document promises RFC 3339 text only.
    if not isinstance(value, str):
        raise ValueError("must be RFC 3339 text with an offset, e.g. 2027-03-28T02:30:00+01:00")
    return value


Rfc3339 = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)]
# A concurrency or rate key: printable, at most 256 characters (it is a column and a lock row).
GateKeyName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
ConcurrencyStrategy = Literal["queue", "round_robin", "cancel_newest", "cancel_in_progress", "keep_latest"]


class ConcurrencySpec(BaseModel):
    """At most `limit` jobs of `key` are queued in JOBS or running at once (docs/gates.md)."""

    model_config = {"extra": "forbid"}
    key: GateKeyName = Field(description="e.g. `tenant:acme`; shared by every job that names it")
    limit: int = Field(ge=1, le=100_000)
    strategy: ConcurrencyStrategy = Field(
        "queue",
        description="When the key is full: `queue` (FIFO within the key, priority first), "
        "`round_robin` (across the keys of `group`), `cancel_newest` (refuse the new job), "
        "`cancel_in_progress` (the new job replaces the running one), `keep_latest` (only the "
        "newest waiting job per key is kept)",
    )
    group: GateKeyName | None = Field(None, description="Keys served in turn (`round_robin`)")


def _given(name: str) -> JsonDict:
    """JSON Schema: `name` is present and not null."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


class RateSpec(BaseModel):
    """Jobs of `key` are admitted no faster than `per_s` (or `per_min`), `burst` at once."""

    # The document says what the validator checks: exactly one of the two rates.
    model_config = {"extra": "forbid", "json_schema_extra": {"oneOf": [_given("per_s"), _given("per_min")]}}
    key: GateKeyName
    per_s: float | None = Field(None, gt=0, le=100_000)
    per_min: float | None = Field(None, gt=0, le=6_000_000)
    burst: int = Field(1, ge=1, le=100_000)

    @model_validator(mode="after")
    def _one_rate(self) -> "RateSpec":
        if (self.per_s is None) == (self.per_min is None):
            raise ValueError("give exactly one of per_s and per_min")
        return self

    def per_second(self) -> float:
        return self.per_s if self.per_s is not None else (self.per_min or 0) / 60


class ApprovalSpec(BaseModel):
    """A person must approve the job before it may start (docs/gates.md)."""

    model_config = {"extra": "forbid"}
    before_start: Literal[True] = True
    approvers: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        default_factory=lambda: ["admin"],
        min_length=1,
        max_length=20,
        description="Roles (that role or higher) or key names who may approve",
    )
    expires_s: float = Field(
        86400.0,
        gt=0,
        le=30 * 86400,
        description="Unanswered this long after it starts waiting for approval: cancelled",
    )

    def record(self, now: float) -> dict[str, Any]:
        """The job's `approval` column: the window is kept, so a retry asks again for as long."""
        return {
            "approvers": list(self.approvers),
            "expires_s": self.expires_s,
            "expires_at": now + self.expires_s,
            "decision": None,
        }


class ApprovalPolicy(ApprovalSpec):
    """Approval before start for every job of a type or queue (TASKYARD_API_APPROVAL_POLICIES)."""

    mode: Literal["AUTO", "APPROVAL_REQUIRED"] = "APPROVAL_REQUIRED"


class ApprovalPolicies(BaseModel):
    """{"types": {type: policy}, "queues": {queue: policy}} (docs/operations.md)."""

    model_config = {"extra": "forbid"}
    types: dict[str, ApprovalPolicy] = {}
    queues: dict[str, ApprovalPolicy] = {}


class JobFields(BaseModel):
    """What a job is: the fields of a submit, of a batch member and of a workflow node."""

    # The document says what _one_time checks: not both a time and a delay.
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"not": {"allOf": [_given("run_at"), _given("delay_s")]}},
    }

    type: str = Field(pattern=JOB_TYPE, description=TYPE_RULE)
    payload: Any = Field(
        None,
        description=f"Any JSON value nested at most {MAX_DEPTH} levels; at most the server's "
        "TASKYARD_API_MAX_PAYLOAD_BYTES (256 KiB by default) as compact JSON, else a 413.",
        json_schema_extra=JSON_VALUE,
    )
    queue: str = Field("default", pattern=QUEUE)
    priority: Priority = "normal"
    timeout_s: float = Field(3600.0, gt=0, le=7 * 86400)
    max_attempts: int = Field(3, ge=1, le=100)
    backoff: BackoffIn = Field(default_factory=BackoffIn)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    labels: dict[LabelName, LabelValue] = Field(
        default_factory=dict, max_length=32, json_schema_extra={"additionalProperties": False}
    )
    notify: NotifySpec | None = Field(
        None,
        description="A webhook on chosen outcomes, signed with the api's TASKYARD_API_WEBHOOK_SECRET "
        "(a 422 when the api has none); default: the queue's, if TASKYARD_API_NOTIFY_QUEUE_DEFAULTS names it",
    )

    run_at: Rfc3339 | None = Field(
        None, description="Not before this time (RFC 3339 with an offset); `scheduled` until then"
    )
    delay_s: float | None = Field(None, gt=0, le=366 * 86400, description="Not before now + this")
    concurrency: ConcurrencySpec | None = None
    rate: RateSpec | None = None
    approval: ApprovalSpec | None = None

    @model_validator(mode="after")
    def _one_time(self) -> "JobFields":
        if self.run_at is not None and self.delay_s is not None:
            raise ValueError("give run_at or delay_s, not both")
        return self

    def artifacts(self) -> dict[str, Any] | None:
        """The `artifacts` column (files in and out): only a submitted job (JobCreate) has files."""
        return None

    def record_fields(self, now: float) -> dict[str, Any]:
        """The job record's columns (lifecycle.JobRecord) this spec fills, as asked at `now`: the
        webhook is a row of its own, gates are stored as their columns."""
        return self.model_dump(include=_RECORD_FIELDS) | self._gate_columns(now)

    def _gate_columns(self, now: float) -> dict[str, Any]:
        run_at = self.run_at.timestamp() if self.run_at else (now + self.delay_s if self.delay_s else None)
        out: dict[str, Any] = {"run_at": run_at}
        if self.approval is not None:
            out["approval"] = self.approval.record(now)
        if self.concurrency is not None:
            out["concurrency_key"] = self.concurrency.key
            out["concurrency"] = self.concurrency.model_dump(exclude={"key"})
        if self.rate is not None:
            out["rate_key"] = self.rate.key
            out["rate"] = {"per_s": self.rate.per_second(), "burst": self.rate.burst}
        return out

    @field_validator("payload")
    @classmethod
    def _payload_shape(cls, value: Any) -> Any:
        if _depth(value, MAX_DEPTH) > MAX_DEPTH:
            raise ValueError(f"payload nests deeper than {MAX_DEPTH} levels")
        return value

    def payload_size(self) -> int:
        return len(json.dumps(self.payload, separators=(",", ":")).encode())


_RECORD_FIELDS = set(JobFields.model_fields) - {
    "notify",
    "run_at",
    "delay_s",
    "concurrency",
    "rate",
    "approval",
}


class JobCreate(JobFields):
    name: NodeName | None = Field(None, description="Its name within the request, for `depends_on`.")
    depends_on: list[NodeName | Dependency] = Field(
        default_factory=list,
        max_length=MAX_PARENTS,
        description="Parents: job ids, or names of jobs in the same request (a plain string waits "
        "for success). While a parent is open the job is `blocked`; a parent that ends in a way "
        "its edge does not accept makes it `skipped`.",
    )

    # Files (docs/artifacts.md); not on JobFields, whose `inputs` means a workflow node's inputs.
    inputs: list[InputRef] = Field(
        default_factory=list,
        max_length=1000,
        description="Files staged into the job's working directory before it runs; each must have "
        "been uploaded first (PUT /api/v1/inputs/{sha256}), else a 422 naming `inputs[i].sha256`",
    )
    outputs: list[OutputGlob] = Field(
        default_factory=list,
        max_length=64,
        description="Globs relative to the working directory (`out/**`), collected after the run",
    )

    def artifacts(self) -> dict[str, Any] | None:
        """The `artifacts` column: None for the (usual) job without files."""
        if not self.inputs and not self.outputs:
            return None
        return {"inputs": [i.model_dump() for i in self.inputs], "outputs": list(self.outputs)}

    def parents(self) -> list[Dependency]:
        return [d if isinstance(d, Dependency) else Dependency(job=d) for d in self.depends_on]


class JobBatch(BaseModel):
    model_config = {"extra": "forbid"}
    jobs: list[JobCreate] = Field(min_length=1)


class BatchCreate(JobBatch):
    """A batch: its members, and callback jobs run once when the last member has ended, given
    the batch's summary in `payload.batch`."""

    # The document says what the route checks: with `parallel`, no member names its own key.
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "if": _given("parallel"),
            "then": {"properties": {"jobs": {"items": {"not": _given("concurrency")}}}},
        },
    }

    name: str | None = Field(None, min_length=1, max_length=200)
    notify: NotifySpec | None = Field(None, description="Each member's webhook, unless it has its own.")
    parallel: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="At most this many members queued or running at once (a concurrency key "
        "`batch:<batch id>` on each member; a member may then name no concurrency key of its own)",
    )
    on_success: JobFields | None = Field(None, description="Runs if every member succeeded.")
    on_failure: JobFields | None = Field(None, description="Runs if any member did not succeed.")
    on_complete: JobFields | None = Field(None, description="Runs in either case.")


class MapSpec(BaseModel):
    """Fan a node out: one job per item of a list in an upstream node's result."""

    model_config = {"extra": "forbid"}
    over: str = Field(
        min_length=1,
        max_length=1000,
        description="`<node>` or `<node>/<JSON pointer>` to a list in that node's result (the node must "
        "be among `needs`). Each item's job gets `payload.item` and `payload.index`; a value that is "
        "not a list (or has over 10,000 items) fails the map node (InputMissing).",
    )
    parallel: int | None = Field(
        None, ge=1, le=10_000, description="At most this many items queued or running at once."
    )


class WorkflowNode(JobFields):
    """A workflow's node: a job with an `id` (its name), the nodes it `needs`, and `inputs`."""

    id: NodeName
    needs: list[NodeName] = Field(default_factory=list, max_length=MAX_PARENTS)
    inputs: dict[LabelName, str] = Field(
        default_factory=dict,
        max_length=32,
        json_schema_extra={"additionalProperties": False},
        description="payload key → `<node>` or `<node>/<JSON pointer>` into that node's result, "
        "filled in when this node is released (a missing path fails it). The node must be needed.",
    )
    map: MapSpec | None = Field(
        None,
        description="Run this node once per item of an upstream list; the node's result is the list of "
        "the items' results, in order (downstream `inputs` read it as `<this node>` or `<this node>/2`).",
    )


class WorkflowCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: str | None = Field(None, min_length=1, max_length=200)
    nodes: list[WorkflowNode] = Field(min_length=1)
    notify: NotifySpec | None = Field(None, description="Each node's webhook, unless it has its own.")
    on_failure: Literal["stop", "continue"] = Field(
        "stop",
        description="stop: a failed node skips every node not yet started; continue: only its descendants.",
    )


# A batch of 500 jobs shares its created and updated times, and each job document formats both:
# 1.4 µs a call formatted, 0.09 µs from the cache.
@lru_cache(maxsize=4096)
def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class KeyCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1, max_length=100)
    role: Literal["viewer", "submitter", "admin"]
