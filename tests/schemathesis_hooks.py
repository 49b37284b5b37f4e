"""Schemathesis hooks for test_bad_input: what the OpenAPI document states only in words.

A job's `type` must be built-in or registered by a worker (a rule that changes while the server
runs, so the document describes it instead of enumerating it): a generated type that fits the
pattern is replaced by `noop`, which every executor runs and whose payload may be any JSON.
Work made of many jobs must form a graph that can run: names unique, parents that exist, no
cycle, inputs from parents, a map over a needed node. A generated graph whose parts fit the schema
is made runnable: unique names, and no parents, inputs or map. Parts that break the schema are left alone, so negative
cases stay negative.

A job's input files must be uploaded first (a rule of the server's state): schema-valid ones are
dropped; output names the schema admits but the worded rule refuses become "out/**". An upload's
path names its body's sha256: a schema-valid one is made the right one.

A schedule's `cron` must be a cron expression that fires and its `timezone` an IANA zone (rules
in words): schema-valid strings become `0 3 * * *` and `UTC`; `cron` and `every_s` are one or the
other (a rule across two fields), and its `template` is a job made runnable as above, without what
a template may not have (`name`, `depends_on`, `idempotency_key`, `run_at`).

A cost total's `since` must be more than 0 and at most 400 days (a bound in words): a
schema-valid one becomes `7d`.

A job's `notify` needs the api's TASKYARD_API_WEBHOOK_SECRET (another rule in words): this api has
none, so a well-formed `notify` is dropped (a malformed one stays, and must be a 422).

A REST worker's claim long-polls up to `wait_s` (≤ 60 s) when its queue is empty: schema-valid
waits (and an absent one, 20 s by default) become 0, so a claim answers at once (204) inside the
run's response time limit.
"""

import hashlib
import re

import schemathesis
from pydantic import ValidationError

from taskyard_api.costs import SINCE
from taskyard_api.schemas import FILE_NAME, JOB_TYPE, LABEL_NAME, NODE_NAME, MapSpec, NotifySpec
from taskyard_common.artifact_names import BadName, normalise

SUBMITS = ("/api/v1/jobs", "/api/v1/jobs:batch", "/api/v1/batches", "/api/v1/workflows")


def _fits(name: object) -> bool:
    """A schema-valid file name (docs/artifacts.md states the rest of the rule in words)."""
    return isinstance(name, str) and re.fullmatch(FILE_NAME, name) is not None


def _ok(name: str) -> bool:
    try:
        normalise(name)
    except BadName:
        return False
    return True


def _names(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str)
        and re.fullmatch(NODE_NAME, v)
        or isinstance(v, dict)
        and isinstance(v.get("job"), str)
        and re.fullmatch(NODE_NAME, v["job"])
        for v in value
    )


def _well_formed_map(value: object) -> bool:
    try:
        MapSpec.model_validate(value)
    except ValidationError:
        return False
    return True


def _runnable(job: object, i: int) -> None:
    if not isinstance(job, dict):
        return
    if isinstance(job.get("type"), str) and re.fullmatch(JOB_TYPE, job["type"]):
        job["type"] = "noop"
    if _well_formed_notify(job.get("notify")):
        del job["notify"]
    for key in ("name", "id"):
        if isinstance(job.get(key), str) and re.fullmatch(NODE_NAME, job[key]):
            job[key] = f"n{i}"
    for key in ("depends_on", "needs"):
        if _names(job.get(key)):
            job[key] = []
    if isinstance(job.get("inputs"), list) and all(
        isinstance(f, dict) and _fits(f.get("path")) for f in job["inputs"]
    ):
        job["inputs"] = []  # files not uploaded here
    if isinstance(job.get("outputs"), list):
        job["outputs"] = [o if not _fits(o) or _ok(o) else "out/**" for o in job["outputs"]]
    if _well_formed_map(job.get("map")):
        del job["map"]  # its `over` must name a needed node, and the needs are gone
    inputs = job.get("inputs")
    if isinstance(inputs, dict) and all(
        isinstance(v, str) and re.fullmatch(LABEL_NAME, k) for k, v in inputs.items()
    ):
        job["inputs"] = {}


def _well_formed_notify(notify: object) -> bool:
    if notify is None:
        return False
    try:
        NotifySpec.model_validate(notify)
    except ValidationError:
        return False
    return True


def _json_object_filter(where: object) -> None:
    """A job filter's `payload` is a JSON object in a string (stated in words): a generated string
    within the length limit becomes `{}` (matches every object payload); the limit's negatives stay."""
    if isinstance(where, dict) and isinstance(where.get("payload"), str) and len(where["payload"]) <= 2000:
        where["payload"] = "{}"
    if isinstance(where, dict):
        # `<name>_before` earlier than `<name>_after` is a 422 (a rule across two fields): drop it.
        for name in ("created", "finished"):
            if where.get(f"{name}_after") is not None and where.get(f"{name}_before") is not None:
                where.pop(f"{name}_before")


def _schedule(body: object, create: bool) -> None:
    if not isinstance(body, dict):
        return
    if isinstance(body.get("cron"), str) and 1 <= len(body["cron"]) <= 200:
        body["cron"] = "0 3 * * *"
    if isinstance(body.get("timezone"), str) and 1 <= len(body["timezone"]) <= 64:
        body["timezone"] = "UTC"
    if body.get("cron") is not None and body.get("every_s") is not None:
        body.pop("every_s")
    if create and body.get("cron") is None and body.get("every_s") is None:
        body["cron"] = "0 3 * * *"
    template = body.get("template")
    _runnable(template, 0)
    if isinstance(template, dict):
        for key in ("name", "depends_on", "idempotency_key", "run_at"):
            template.pop(key, None)


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path == "/api/v1/queues/{queue}/claim" and isinstance(case.body, dict):
        wait = case.body.get("wait_s", 20)  # absent: the default, 20 s
        if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait <= 60:
            case.body["wait_s"] = 0
    if case.operation.path.startswith("/api/v1/schedules") and case.method in ("POST", "PATCH"):
        _schedule(case.body, create=case.method == "POST")
        return
    if case.operation.path == "/api/v1/inputs/{sha256}" and case.method == "PUT":
        # The bytes the transport will send (case.body may be a binary wrapper, not bytes).
        sent = case.as_transport_kwargs(base_url="http://127.0.0.1")
        raw = next((sent[k] for k in ("data", "content", "body") if sent.get(k) is not None), b"")
        body = raw if isinstance(raw, bytes) else str(raw).encode()
        sha = (case.path_parameters or {}).get("sha256")
        if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha):
            case.path_parameters["sha256"] = hashlib.sha256(body).hexdigest()
        return
    if case.operation.path == "/api/v1/jobs" and case.method == "GET":
        _json_object_filter(case.query)
        if (
            isinstance(case.query, dict)
            and isinstance(case.query.get("cursor"), str)
            and len(case.query["cursor"]) <= 200
        ):
            case.query.pop("cursor")  # a cursor is only what a previous page gave out (opaque)
        return
    if case.operation.path == "/api/v1/costs" and isinstance(case.query, dict):
        since = case.query.get("since")
        if isinstance(since, str) and re.fullmatch(SINCE, since):
            case.query["since"] = "7d"  # its bound (more than 0, at most 400 days) is in words
        return
    if case.operation.path == "/api/v1/jobs:bulk" and isinstance(case.body, dict):
        _json_object_filter(case.body.get("filter"))
        return
    if case.operation.path not in SUBMITS or case.method != "POST" or not isinstance(case.body, dict):
        return
    _runnable(case.body, 0)
    for many in ("jobs", "nodes"):
        if isinstance(case.body.get(many), list):
            for i, job in enumerate(case.body[many]):
                _runnable(job, i)
    for callback in ("on_success", "on_failure", "on_complete"):
        _runnable(case.body.get(callback), 0)
