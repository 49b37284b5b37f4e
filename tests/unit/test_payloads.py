"""payload_problems: the built-in payload check shared by the API (submit) and the executor (run)."""

import pytest

from taskyard_common.payloads import BUILTIN_TYPES, PAYLOAD_MODELS, payload_problems


def test_builtin_types_all_have_an_entry() -> None:
    assert tuple(PAYLOAD_MODELS) == BUILTIN_TYPES == ("noop", "sleep", "shell", "python", "http")


@pytest.mark.parametrize(
    ("job_type", "payload"),
    [
        ("noop", None),
        ("noop", "anything at all"),
        ("sleep", {"seconds": 0}),
        ("sleep", {"seconds": 2}),  # an int is a valid float even in strict mode
        ("shell", {"command": "echo hi"}),
        ("shell", {"command": ["ls", "-l"], "env": {"A": "b"}}),
        ("python", {"script": "print(1)"}),
        ("http", {"url": "https://example.com:8443/x?y=1", "method": "post", "expect_status": [200, "3xx"]}),
        ("flaky", {"whatever": True}),  # not built-in: not checked here
    ],
)
def test_good_payloads_have_no_problems(job_type, payload) -> None:
    assert payload_problems(job_type, payload) == []


@pytest.mark.parametrize(
    ("job_type", "payload", "expected"),
    [
        ("shell", {}, ["payload.command: Field required"]),
        ("shell", None, ["payload.command: Field required"]),
        ("shell", "ls", ["payload must be a JSON object, got str"]),
        ("sleep", [1], ["payload must be a JSON object, got list"]),
        ("sleep", {"seconds": "x"}, ["payload.seconds: Input should be a valid number"]),
        (
            "shell",
            {"command": ["ls"], "shell": True},
            ["payload: Value error, command must be a string when shell is true"],
        ),
        ("shell", {"command": ["ls"], "env": {"N": 1}}, ["payload.env.N: Input should be a valid string"]),
        ("python", {}, ["payload: Value error, exactly one of script or path is required"]),
        ("http", {"url": "ftp://x"}, ["payload.url: Value error, must be an http:// or https:// URL"]),
        ("http", {"url": "http://"}, ["payload.url: Value error, invalid URL: no host"]),
        (
            "http",
            {"url": "http://x:99999/"},
            ["payload.url: Value error, invalid URL: Port out of range 0-65535"],
        ),
        ("http", {"url": "http://[::1"}, ["payload.url: Value error, invalid URL: Invalid IPv6 URL"]),
    ],
)
def test_bad_payloads_are_named_by_field(job_type, payload, expected) -> None:
    assert payload_problems(job_type, payload) == expected


def test_every_problem_is_reported() -> None:
    problems = payload_problems("http", {"url": "x", "method": "GET /", "shel": 1})
    assert [p.split(":")[0] for p in problems] == ["payload.url", "payload.method", "payload.shel"]
