"""Hostile and malformed input: fuzzing the OpenAPI schema, injection, NUL bytes, rate limits."""

import os
import subprocess
import sys
import time

import httpx

from .conftest import create_key


def test_schemathesis_finds_no_server_errors(stack):
    stack.start_api()
    stack.start_executor()
    st = os.path.join(os.path.dirname(sys.executable), "st")
    out = subprocess.run(
        [
            st, "run", f"{stack.api.url}/openapi.json",
            "--checks", "not_a_server_error",
            "-H", f"Authorization: Bearer {stack.admin_key}",
            "--max-examples", "25",
            "--generation-deterministic",
            "--request-timeout", "10",
            "--phases", "examples,fuzzing",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    # Every 4xx the fuzzer provoked carries a message.
    with stack.http() as c:
        for body in ({"type": 1}, {"type": "noop", "labels": {"k": "\x00"}}, [], "x", {"type": "\x00"}):
            r = c.post("/api/v1/jobs", json=body)
            assert 400 <= r.status_code < 500 and r.json()["detail"], (body, r.text)


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
        for bad in ("..%2F..%2Fetc%2Fpasswd", "x" * 300, "%00"):
            assert c.get(f"/api/v1/jobs/{bad}").status_code == 404


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


def test_guessing_keys_is_throttled(stack):
    stack.start_api(TASKYARD_API_AUTH_FAILURES_LIMIT="5", TASKYARD_API_AUTH_FAILURES_WINDOW_S="60")
    codes = []
    for i in range(7):
        r = httpx.get(f"{stack.api.url}/api/v1/jobs", headers={"Authorization": f"Bearer ty_guess_{i}"})
        codes.append(r.status_code)
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    assert "Retry-After" in r.headers


def test_nul_bytes_in_filters_and_ids_are_client_errors(stack):
    stack.start_api()
    with stack.http() as c:
        assert c.post("/api/v1/jobs/%00/cancel").status_code == 404
        assert c.get("/api/v1/jobs", params={"queue": "a\x00b"}).status_code in (200, 422)
        assert c.get("/api/v1/jobs", params={"label": "k=\x00"}).status_code in (200, 422)
        assert c.get("/api/v1/checkpoints/ck_%00").status_code in (404, 422)
        assert c.get("/readyz").status_code == 200  # and the database is fine
