"""Unit tests of the SDK/CLI parts that need no server: SSE decoding, log-follow bookkeeping,
configuration resolution, error flattening, label parsing, exit codes. A closed loopback port
proves that an unreachable API gives exit code 4 without a traceback (no process is started: the
same check as a real `taskyard` process is in tests/test_cli.py)."""

import json
import socket

import httpx
import pytest
from click.testing import CliRunner

from taskyard import Client, ConfigError, JobFailed, TaskyardError
from taskyard._calls import LogFollow, job_spec, list_params
from taskyard._config import DEFAULT_URL, resolve
from taskyard._render import exit_code, parse_label, parse_labels, parse_statuses, status_line, table
from taskyard._sse import SSEDecoder, SSEEvent, iter_events
from taskyard.cli import cli
from taskyard.errors import error_from_response, flatten_detail


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No ambient configuration: a real ./data/credentials.json or TASKYARD_* must not leak in."""
    for name in ("TASKYARD_URL", "TASKYARD_API_KEY", "TASKYARD_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# SSE


def test_sse_decodes_named_events_and_ignores_comments():
    text = ': keepalive\nevent: log\ndata: {"seq": 1}\n\nevent: end\ndata: {"status": "succeeded"}\n\n'
    events = list(iter_events(text.split("\n")))
    assert events == [SSEEvent("log", '{"seq": 1}'), SSEEvent("end", '{"status": "succeeded"}')]


def test_sse_multiline_data_crlf_and_no_space_after_colon():
    decoder = SSEDecoder()
    assert decoder.feed("data:first\r\n") is None
    assert decoder.feed("data:  second") is None  # only one leading space is stripped
    assert decoder.feed("id: 7") is None
    event = decoder.feed("\r\n")
    assert event == SSEEvent("message", "first\n second", "7")


def test_sse_blank_lines_alone_dispatch_nothing_and_trailing_partial_event_is_dropped():
    events = list(iter_events(["", "", "event: log", "data: x", "", "event: log", "data: unterminated"]))
    assert events == [SSEEvent("log", "x")]


def test_sse_unknown_fields_and_retry_are_ignored():
    events = list(iter_events(["retry: 1000", "foo: bar", "", "data", ""]))
    assert events == [SSEEvent("message", "")]


# Log follow bookkeeping


def log_event(seq, line="x", stream="stdout"):
    return SSEEvent("log", json.dumps({"seq": seq, "stream": stream, "line": line, "attempt": 1}))


def test_log_follow_tracks_seq_and_skips_duplicates_after_reconnect():
    state = LogFollow("01J", after=0)
    assert state.on_event(log_event(3))["seq"] == 3
    assert state.on_event(log_event(5))["seq"] == 5
    assert state.params == [("after", "5")]
    assert state.on_event(log_event(5)) is None  # replayed by a server that treats `after` inclusively
    assert state.on_event(SSEEvent("end", '{"status": "failed"}')) is None
    assert state.end == {"status": "failed"}


def test_log_follow_keeps_malformed_lines_and_gives_up_after_its_budget():
    state = LogFollow("a/b", after=0)
    assert state.path == "/api/v1/jobs/a%2Fb/logs/stream"
    assert state.on_event(SSEEvent("log", "not json")) == {"seq": None, "stream": "log", "line": "not json"}
    assert state.on_event(SSEEvent("ping", "{}")) is None
    delays = [state.backoff() for _ in range(LogFollow.MAX_FAILURES)]
    assert all(d is not None and d > 0 for d in delays) and delays == sorted(delays)
    assert state.backoff() is None
    state.on_event(log_event(1))  # progress restores the budget
    assert state.backoff() is not None


def test_job_spec_omits_unset_options_and_list_params_repeat_status():
    assert job_spec("noop", None, queue=None, priority="high") == {
        "type": "noop",
        "payload": None,
        "priority": "high",
    }
    params = list_params(["failed", "dead"], queue="q", label="team=data", limit=10)
    assert params == [
        ("status", "failed"),
        ("status", "dead"),
        ("queue", "q"),
        ("label", "team=data"),
        ("limit", "10"),
    ]
    assert list_params("running")[0] == ("status", "running")


# Errors


def test_flatten_detail_string_and_fastapi_422_list():
    assert flatten_detail("job not found") == "job not found"
    detail = [
        {"loc": ["body", "jobs", 2, "type"], "msg": "String should match pattern", "type": "x"},
        {"loc": ["body", "labels"], "msg": "Value error, label name 'a b' is bad", "type": "value_error"},
        {"loc": ["query", "limit"], "msg": "Input should be a valid integer"},
        {"msg": "no location"},
        "odd item",
    ]
    assert flatten_detail(detail) == (
        "jobs[2].type: String should match pattern; labels: label name 'a b' is bad; "
        "limit: Input should be a valid integer; no location; odd item"
    )


def test_error_from_response_uses_detail_or_first_line_or_reason():
    assert (
        str(error_from_response(httpx.Response(404, json={"detail": "job x not found"})))
        == "404 job x not found"
    )
    html = error_from_response(httpx.Response(502, text="<html>\nBad Gateway\n</html>"))
    assert (html.status_code, html.detail) == (502, "<html>")
    empty = error_from_response(httpx.Response(503))
    assert (empty.status_code, empty.detail) == (503, "Service Unavailable")


def test_job_failed_carries_the_job():
    exc = JobFailed({"id": "J", "status": "dead", "error": {"type": "Timeout", "message": "after 5s"}})
    assert (exc.status, str(exc)) == ("dead", "job J dead: Timeout: after 5s")


# Configuration


def test_resolve_defaults(tmp_path):
    assert resolve() == (DEFAULT_URL, None)


def test_resolve_precedence_args_env_file(monkeypatch, tmp_path):
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"url": "http://file:1/", "api_key": "file-key"}))
    monkeypatch.setenv("TASKYARD_CREDENTIALS", str(creds))
    assert resolve() == ("http://file:1", "file-key")
    monkeypatch.setenv("TASKYARD_URL", "http://env:2")
    assert resolve() == ("http://env:2", "file-key")  # each value resolves on its own
    monkeypatch.setenv("TASKYARD_API_KEY", "env-key")
    assert resolve() == ("http://env:2", "env-key")
    assert resolve("http://arg:3", "arg-key") == ("http://arg:3", "arg-key")


def test_resolve_local_credentials_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "credentials.json").write_text(
        json.dumps({"url": "http://127.0.0.1:9", "api_key": "k"})
    )
    assert resolve() == ("http://127.0.0.1:9", "k")


def test_resolve_bad_credentials_files(monkeypatch, tmp_path):
    monkeypatch.setenv("TASKYARD_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="cannot read credentials file"):
        resolve()
    # Fully explicit configuration never reads the file, so a broken one cannot get in the way.
    assert resolve("http://x:1", "k") == ("http://x:1", "k")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    monkeypatch.setenv("TASKYARD_CREDENTIALS", str(bad))
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve()


def test_client_rejects_url_without_scheme_and_hides_key():
    with pytest.raises(ConfigError, match="http://"):
        Client("localhost:8740", "k")
    with Client("http://127.0.0.1:1", "secret") as ty:
        assert "secret" not in repr(ty)


def test_client_unreachable_is_status_zero():
    url = f"http://127.0.0.1:{closed_port()}"
    with Client(url, "k", timeout=5) as ty, pytest.raises(TaskyardError) as info:
        ty.whoami()
    assert info.value.status_code == 0
    assert info.value.detail.startswith(f"cannot reach Taskyard API at {url}: ")


# Rendering and parsing


def test_parse_labels():
    assert parse_label("team=data") == ("team", "data")
    assert parse_label("expr=a=b") == ("expr", "a=b")
    assert parse_label("empty=") == ("empty", "")
    for bad in ("nokey", "=value", ""):
        with pytest.raises(ValueError):
            parse_label(bad)
    assert parse_labels(["a=1", "b=2", "a=3"]) == {"a": "3", "b": "2"}


def test_parse_statuses():
    assert parse_statuses(["failed,DEAD", "running"]) == ["failed", "dead", "running"]
    with pytest.raises(ValueError, match="unknown status 'bogus'"):
        parse_statuses(["bogus"])


def test_status_line_and_table():
    job = {"id": "J1", "status": "failed", "queue": "default", "priority": "normal", "attempt": 1,
           "max_attempts": 3, "error": {"type": "ExitCode", "message": "exited\n3", "exit_code": 3}}  # fmt: skip
    assert (
        status_line(job) == "J1 · failed · queue default/normal · attempt 1/3 · ExitCode: exited 3 (exit 3)"
    )
    assert table(["A", "BB"], [["x", "y"], ["long", ""]]) == "A     BB\nx     y\nlong"


@pytest.mark.parametrize(
    ("job", "code"),
    [
        ({"status": "succeeded", "result": {"exit_code": 0}}, 0),
        ({"status": "succeeded", "result": None}, 0),
        ({"status": "failed", "error": {"exit_code": 7}}, 7),
        ({"status": "failed", "error": {"exit_code": 0}}, 1),
        ({"status": "dead", "error": {"exit_code": -9}}, 137),
        ({"status": "failed", "error": {"exit_code": 1000}}, 1),
        ({"status": "cancelled", "error": None}, 1),
        ({"status": "dead", "error": {"type": "Timeout"}}, 1),
    ],
)
def test_exit_code_mirrors_the_job(job, code):
    assert exit_code(job) == code


# CLI exit codes without a server


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["submit", "noop", "--payload", "{bad"], "error: --payload: invalid JSON"),
        (
            ["submit", "noop", "--payload-file", "missing.json"],
            "error: --payload-file: cannot read missing.json",
        ),
        (["submit", "noop", "--payload", "1", "--payload-file", "-"], "not both"),
        (["submit", "noop", "--label", "nokey"], "error: --label: expected key=value"),
        (["list", "--status", "bogus"], "error: --status: unknown status"),
        (["--url", "localhost:8740", "status", "J"], "error: API URL must start with"),
        (["run"], "Missing argument"),
        (["keys", "create", "ci"], "Missing option '--role'"),
        (["submit", "noop", "--priority", "urgent"], "Invalid value for '--priority'"),
    ],
)
def test_cli_bad_input_exits_2(args, needle):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_bad_payload_is_reported_before_contacting_the_api():
    # A closed port proves the order: bad input must win over "unreachable".
    url = f"http://127.0.0.1:{closed_port()}"
    result = CliRunner().invoke(cli, ["--url", url, "submit", "noop", "--payload", "[1,"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--payload" in result.stderr


def test_cli_payload_file_from_stdin_reaches_the_request_stage():
    url = f"http://127.0.0.1:{closed_port()}"
    result = CliRunner().invoke(
        cli, ["--url", url, "submit", "noop", "--payload-file", "-"], input='{"a": 1}'
    )
    assert result.exit_code == 4, result.output


def test_gate_options_become_the_submit_gate_fields_or_a_one_line_reason():
    import pytest

    from taskyard._cli_common import BadInput
    from taskyard._cli_jobs import gates_of

    gates = gates_of(None, 30.0, "tenant:acme=2", "keep_latest", "openai=300/min", 5, ("admin", "ops"))
    assert gates == {
        "run_at": None,
        "delay_s": 30.0,
        "concurrency": {"key": "tenant:acme", "limit": 2, "strategy": "keep_latest"},
        "rate": {"key": "openai", "per_min": 300.0, "burst": 5},
        "approval": {"approvers": ["admin", "ops"]},
    }
    for args, said in [
        ((None, None, "tenant", None, None, None, ()), "--concurrency: expected KEY=VALUE"),
        ((None, None, "k=two", None, None, None, ()), "--concurrency: LIMIT must be a whole number"),
        ((None, None, None, "queue", None, None, ()), "--strategy: give --concurrency"),
        ((None, None, None, None, "openai=5/h", None, ()), "--rate: expected KEY=N/s"),
        ((None, None, None, None, None, 3, ()), "--burst: give --rate"),
    ]:
        with pytest.raises(BadInput, match=said):
            gates_of(*args)


def test_schedule_rendering():
    from taskyard._calls import schedule, schedule_action, schedules
    from taskyard._render_schedules import fire_row, schedule_row, show_lines, trigger_line, when

    assert schedule_action("a/b", "pause").path == "/api/v1/schedules/a%2Fb/pause"
    assert schedules(5).params == [("limit", "5")] and schedule("S", 3).params == [("history", "3")]
    s = {"id": "S1", "name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
         "template": {"type": "shell"}, "overlap": "skip", "catch_up": "latest", "catch_up_max": 10,
         "paused": False, "next_fires": ["2027-03-28T03:00:00+02:00"]}  # fmt: skip
    assert when(s) == "cron 30 2 * * *" and when({"every_s": 0.5}) == "every 0.5s"
    assert schedule_row(s)[-2:] == ["active", "2027-03-28T03:00:00+02:00"]
    assert "    2027-03-28T03:00:00+02:00" in show_lines(s)
    assert show_lines({**s, "paused": True, "next_fires": []})[-1] == "  next fires: none (paused)"
    fire = {"fire_at": "2027-03-28T01:00:00.250Z", "kind": "timer", "outcome": "skipped", "job_id": None,
            "job_status": None, "reason": "previous job J is running"}  # fmt: skip
    assert fire_row(fire)[:3] == ["2027-03-28 01:00:00.250", "timer", "skipped"]
    assert (
        trigger_line({"outcome": "created", "job": {"id": "J", "status": "queued"}})
        == "fired: job J (queued)"
    )
    assert trigger_line({"outcome": "skipped", "reason": "why"}) == "skipped: why"
    assert fire_row({**fire, "fire_at": "2027-03-28T01:00:00Z"})[0] == "2027-03-28 01:00:00"


def test_status_explains_a_job_held_by_any_gate():
    from taskyard._render_ops import waiting_lines

    for status, message in [
        ("blocked", "Waiting for 1 parent(s): scan (running)."),
        ("scheduled", "Scheduled for 2027-01-15T08:03:00Z (in 3 min); it is not queued before then."),
        ("needs_approval", "Needs approval by `admin` before it may start."),
        ("throttled", "1/1 running for key `tenant:acme`; 1 ahead of you for this key."),
    ]:
        job = {
            "id": "J1",
            "status": status,
            "eta_seconds": None,
            "waiting_reason": {"code": status, "message": message},
        }
        assert waiting_lines(job) == [f"J1 · {status}", f"  why: {message}"]
