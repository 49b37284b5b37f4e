"""Schemathesis hooks for test_bad_input: what the OpenAPI document states only in words.

A job's `type` must be built-in or registered by a worker (a rule that changes while the server
runs, so the document describes it instead of enumerating it): a generated type that fits the
pattern is replaced by `noop`, which every executor runs and whose payload may be any JSON.
Types that break the pattern are left alone, so negative cases stay negative.

A job's `notify` needs the api's TASKYARD_API_WEBHOOK_SECRET (another rule in words): this api has
none, so a well-formed `notify` is dropped (a malformed one stays, and must be a 422).
"""

import re

import schemathesis
from pydantic import ValidationError

from taskyard_api.schemas import JOB_TYPE, NotifySpec


def _known_type(job: object) -> None:
    if isinstance(job, dict) and isinstance(job.get("type"), str) and re.fullmatch(JOB_TYPE, job["type"]):
        job["type"] = "noop"
    if isinstance(job, dict) and _well_formed_notify(job.get("notify")):
        del job["notify"]


def _well_formed_notify(notify: object) -> bool:
    try:
        NotifySpec.model_validate(notify)
    except ValidationError:
        return False
    return True


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path not in ("/api/v1/jobs", "/api/v1/jobs:batch") or case.method != "POST":
        return
    if not isinstance(case.body, dict):
        return
    _known_type(case.body)
    if isinstance(case.body.get("jobs"), list):
        for job in case.body["jobs"]:
            _known_type(job)
