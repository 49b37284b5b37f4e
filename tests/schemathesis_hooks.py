"""Schemathesis hooks for test_bad_input: what the OpenAPI document states only in words.

A job's `type` must be built-in or registered by a worker (a rule that changes while the server
runs, so the document describes it instead of enumerating it): a generated type that fits the
pattern is replaced by `noop`, which every executor runs and whose payload may be any JSON.
Types that break the pattern are left alone, so negative cases stay negative.
"""

import hashlib
import re

import schemathesis

from taskyard_api.schemas import FILE_NAME, JOB_TYPE
from taskyard_common.artifact_names import BadName, normalise


def _fits(name: object) -> bool:
    """A schema-valid name (docs/artifacts.md states the rest of the rule in words)."""
    return isinstance(name, str) and re.fullmatch(FILE_NAME, name) is not None


def _ok(name: str) -> bool:
    try:
        normalise(name)
    except BadName:
        return False
    return True


def _known_type(job: object) -> None:
    if isinstance(job, dict) and isinstance(job.get("type"), str) and re.fullmatch(JOB_TYPE, job["type"]):
        job["type"] = "noop"
    if not isinstance(job, dict):
        return
    # Inputs must be uploaded first (a rule of the server's state, like job types): schema-valid
    # ones are dropped; file names the schema admits but the worded rule refuses become "out/**".
    if isinstance(job.get("inputs"), list) and all(
        isinstance(i, dict) and _fits(i.get("path")) for i in job["inputs"]
    ):
        job["inputs"] = []
    if isinstance(job.get("outputs"), list):
        job["outputs"] = [o if not _fits(o) or _ok(o) else "out/**" for o in job["outputs"]]


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path == "/api/v1/inputs/{sha256}" and case.method == "PUT":
        # The path names the body's sha256: make a schema-valid one the right one.
        # The bytes the transport will send (case.body may be a binary wrapper, not bytes).
        sent = case.as_transport_kwargs(base_url="http://127.0.0.1")
        raw = next((sent[k] for k in ("data", "content", "body") if sent.get(k) is not None), b"")
        body = raw if isinstance(raw, bytes) else str(raw).encode()
        sha = (case.path_parameters or {}).get("sha256")
        if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha):
            case.path_parameters["sha256"] = hashlib.sha256(body).hexdigest()
        return
    if case.operation.path not in ("/api/v1/jobs", "/api/v1/jobs:batch") or case.method != "POST":
        return
    if not isinstance(case.body, dict):
        return
    _known_type(case.body)
    if isinstance(case.body.get("jobs"), list):
        for job in case.body["jobs"]:
            _known_type(job)
