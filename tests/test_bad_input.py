"""Hostile and malformed input: fuzzing the OpenAPI schema, injection, NUL bytes, rate limits."""

import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from taskyard_common.topology import QUEUE_NAME

from .conftest import create_key


# Forty operations through every phase: minutes on a busy machine (the subprocess has its own bound).
@pytest.mark.timeout(660)
def test_schemathesis_all_checks_find_nothing(stack):
    """Every check against the real api: statuses, error shapes and rules match the document, and
    what the document allows is accepted. Bounds are the test's own: a batch limit of 50 keeps
    the coverage phase's boundary batch cheap; the key-guessing limiter is off for ignored_auth."""
    stack.start_api(TASKYARD_API_MAX_BATCH="50", TASKYARD_API_AUTH_FAILURES_LIMIT="1000000")
    stack.start_executor()
    st = os.path.join(os.path.dirname(sys.executable), "st")
    started = time.monotonic()
    out = subprocess.run(
        [
            st, "run", f"{stack.api.url}/openapi.json",
            "--checks", "all",
            "-H", f"Authorization: Bearer {stack.admin_key}",
            "--max-examples", "20",
            "--generation-deterministic",
            "--request-timeout", "20",
            "--phases", "examples,coverage,fuzzing,stateful",
        ],
        # tests/schemathesis_hooks.py: job types the document describes in words
        env={**os.environ, "PYTHONPATH": os.path.dirname(__file__), "SCHEMATHESIS_HOOKS": "schemathesis_hooks"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    failures = out.stdout.split("FAILURES")[-1].split("SUMMARY")[0] if "FAILURES" in out.stdout else ""
    assert out.returncode == 0, failures[:6000] + out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failure" not in out.stdout.split("SUMMARY")[-1], out.stdout[-3000:]
    print(f"schemathesis: {time.monotonic() - started:.0f} s")


@pytest.mark.one_database("sqlite", why="the OpenAPI document")
def test_openapi_declares_the_error_shape_and_the_rules(stack):
    stack.start_api()
    doc = httpx.get(f"{stack.api.url}/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    submit = doc["paths"]["/api/v1/jobs"]["post"]["responses"]
    assert {"200", "201", "401", "403", "409", "413", "422", "429", "503"} <= submit.keys()
    assert submit["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorAnswer"
    }
    pause = doc["paths"]["/api/v1/queues/{queue}/pause"]["post"]
    assert pause["parameters"][0]["schema"]["pattern"] == QUEUE_NAME.pattern and "404" in pause["responses"]
    [status] = [p for p in doc["paths"]["/api/v1/checkpoints"]["get"]["parameters"] if p["name"] == "status"]
    assert set(status["schema"]["anyOf"][0]["enum"]) == {
        "pending",
        "approved",
        "rejected",
        "answered",
        "expired",
    }
    [after] = [p for p in doc["paths"]["/api/v1/jobs"]["get"]["parameters"] if p["name"] == "created_after"]
    assert not re.fullmatch(after["schema"]["anyOf"][0]["pattern"], "")
    assert "registered" in doc["components"]["schemas"]["JobCreate"]["properties"]["type"]["description"]


@pytest.mark.one_database("sqlite", why="executor-side: the shell handler's arguments")
def test_shell_arguments_are_never_interpreted_by_a_shell(stack, tmp_path):
    stack.start_api()
    stack.start_executor()
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}); `touch {marker}`; touch {marker} && echo x | tee {marker}"
    with stack.http() as c:
        job = c.post("/api/v1/jobs", json={"type": "shell", "payload": {"command": ["echo", hostile]}}).json()
        stack.wait_status(job["id"], "succeeded")
        lines = c.get(f"/api/v1/jobs/{job['id']}/logs").json()["lines"]
    assert [x["line"] for x in lines] == [hostile] and not marker.exists()


def test_unicode_huge_lines_and_odd_ids(stack):
    stack.start_api()
    stack.start_executor()
    with stack.http() as c:
        payload = {"text": "zażółć 🚀 \u202e", "nested": {"ключ": ["値"]}}
        job = c.post(
            "/api/v1/jobs", json={"type": "noop", "payload": payload, "labels": {"team": "ü"}}
        ).json()
        assert stack.wait_status(job["id"], "succeeded")["result"]["payload"] == payload
        big = c.post(
            "/api/v1/jobs", json={"type": "python", "payload": {"script": "print('y' * 300000)"}}
        ).json()
        stack.wait_status(big["id"], "succeeded")
        [line] = c.get(f"/api/v1/jobs/{big['id']}/logs").json()["lines"]
        assert len(line["line"]) < 70_000 and line["line"].endswith("truncated at 65536 bytes]")
        for bad in ("..%2F..%2Fetc%2Fpasswd", "x" * 300):
            assert c.get(f"/api/v1/jobs/{bad}").status_code == 404
        assert c.get("/api/v1/jobs/%00").status_code == 422  # NUL: refused before any lookup


@pytest.mark.one_database("sqlite", why="the api's in-memory submit limiter")
def test_submissions_are_rate_limited_per_key_with_retry_after(stack):
    stack.start_api(TASKYARD_API_SUBMIT_RATE_PER_S="2", TASKYARD_API_SUBMIT_BURST="5")
    other = create_key(stack.db_url, "other", "submitter")
    with stack.http() as c:
        codes = [c.post("/api/v1/jobs", json={"type": "noop"}).status_code for _ in range(6)]
        assert codes[:5] == [201] * 5 and codes[5] == 429
        r = c.post("/api/v1/jobs", json={"type": "noop"})
        assert (
            r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "rate limit" in r.json()["detail"]
        )
        big = c.post("/api/v1/jobs:batch", json={"jobs": [{"type": "noop"}] * 10})
        assert big.status_code == 429  # larger than the burst: never fits
    with stack.http(other) as c:
        assert c.post("/api/v1/jobs", json={"type": "noop"}).status_code == 201  # per key
    time.sleep(1.2)
    with stack.http() as c:
        assert c.post("/api/v1/jobs", json={"type": "noop"}).status_code == 201


@pytest.mark.one_database("sqlite", why="the api's in-memory key-guessing limiter")
def test_guessing_keys_is_throttled(stack):
    stack.start_api(TASKYARD_API_AUTH_FAILURES_LIMIT="5", TASKYARD_API_AUTH_FAILURES_WINDOW_S="60")
    codes = []
    for i in range(7):
        r = httpx.get(f"{stack.api.url}/api/v1/jobs", headers={"Authorization": f"Bearer ty_guess_{i}"})
        codes.append(r.status_code)
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    assert "Retry-After" in r.headers


# (request, the 422's detail): alike on SQLite and PostgreSQL, checked before anything is stored.
BAD_INPUT = [
    (
        (
            "POST",
            "/api/v1/jobs",
            {"json": {"type": "noop", "payload": {"items": [0, 1, 2, {"name": "a\x00"}]}}},
        ),
        "payload.items[3].name: NUL character not allowed",
    ),
    (
        ("POST", "/api/v1/jobs", {"json": {"type": "noop", "payload": {"a\x00b": 1}}}),
        "payload: NUL character not allowed in key 'a\\x00b'",
    ),
    (
        ("POST", "/api/v1/jobs", {"json": {"type": "noop", "idempotency_key": "k\x00"}}),
        "idempotency_key: NUL character not allowed",
    ),
    (
        (
            "POST",
            "/api/v1/jobs:batch",
            {"json": {"jobs": [{"type": "noop"}, {"type": "noop", "labels": {"t": "\x00"}}]}},
        ),
        "jobs[1].labels.t: NUL character not allowed",
    ),
    (
        ("POST", "/api/v1/jobs", {"content": b'{"type": "noop", "payload": {"x": [1, NaN]}}'}),
        "payload.x[1]: NaN is not a finite number (JSON has no NaN or Infinity)",
    ),
    (
        ("POST", "/api/v1/jobs", {"content": b'{"type": "noop", "payload": {"y": -Infinity}}'}),
        "payload.y: -Infinity is not a finite number (JSON has no NaN or Infinity)",
    ),
    (
        ("POST", "/api/v1/jobs", {"content": b'{"type": "noop", "timeout_s": 1e400}'}),
        "timeout_s: 1e400 is not a finite number (JSON has no NaN or Infinity)",
    ),
    (
        (
            "POST",
            "/api/v1/jobs",
            {"content": b'{"type": "noop", "payload": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"},
        ),
        "body: JSON nested deeper than 64 levels",
    ),
    (
        ("POST", "/api/v1/jobs", {"content": b'{"type": "\xff"}'}),
        "body: malformed JSON (not UTF-8 at byte 10)",
    ),
    (("GET", "/api/v1/jobs", {"params": {"status": "queued\x00"}}), "status: NUL character not allowed"),
    (("GET", "/api/v1/jobs", {"params": {"label": "k=\x00"}}), "label: NUL character not allowed"),
    (("GET", "/api/v1/jobs", {"params": {"queue": "a\x00b"}}), "queue: NUL character not allowed"),
    (("POST", "/api/v1/jobs/%00/cancel", {}), "job_id: NUL character not allowed"),
    (("GET", "/api/v1/checkpoints/ck_%00", {}), "ck_id: NUL character not allowed"),
]


def test_bad_input_is_the_same_422_on_every_database_and_nothing_is_stored(stack):
    stack.start_api()
    with stack.http() as c:
        for (method, path, kwargs), detail in BAD_INPUT:
            headers = {"Content-Type": "application/json"} if "content" in kwargs else {}
            r = c.request(method, path, headers=headers, **kwargs)
            assert (r.status_code, r.json()) == (422, {"detail": detail}), (path, kwargs)
        assert c.get("/api/v1/jobs").json()["jobs"] == []
        # What is fine still is: deep but within bounds, big finite numbers, escaped backslashes.
        ok = {"type": "noop", "payload": {"n": 1e300, "s": "\\u0000", "d": [[[[1]]]]}, "timeout_s": 10}
        r = c.post("/api/v1/jobs", json=ok)
        assert r.status_code == 201 and r.json()["payload"] == ok["payload"], r.text
        assert c.get("/readyz").status_code == 200
