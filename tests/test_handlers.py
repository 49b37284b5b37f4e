"""Executor job handlers, driven through ``invoke`` with a real JobContext (no mocks).

Subprocesses, the process pool and the HTTP server are all real; the context's emit callables
just record what they are given.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import socket
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from taskyard_common.schemas import JobSpec, LogLine
from taskyard_executor import JobContext, PermanentError, RetryLater, registry
from taskyard_executor import builtins as bi
from taskyard_executor.errors import (
    HTTPClientError,
    HTTPStatusError,
    InvalidPayload,
    JobError,
    ProcessFailed,
    UnknownJobType,
    as_job_error,
)
from taskyard_executor.registry import Registry, invoke, shutdown_process_pool


class Recorder:
    """Collects what the handler emits, in order."""

    def __init__(self) -> None:
        self.logs: list[LogLine] = []
        self.progress: list[tuple[float, str]] = []

    async def emit_log(self, line: LogLine) -> None:
        self.logs.append(line)

    async def emit_progress(self, pct: float, message: str) -> None:
        self.progress.append((pct, message))

    def lines(self, stream: str) -> list[str]:
        return [entry.line for entry in self.logs if entry.stream == stream]


def make_ctx(job_type: str, payload: Any, rec: Recorder, *, attempt: int = 1) -> JobContext:
    job = JobSpec(id=f"job-{uuid.uuid4().hex[:8]}", type=job_type, payload=payload)
    return JobContext(
        job, attempt=attempt, worker_id="w-test", emit_log=rec.emit_log, emit_progress=rec.emit_progress
    )


async def run(job_type: str, payload: Any = None, reg: Registry = registry) -> tuple[Any, Recorder]:
    rec = Recorder()
    result = await invoke(reg.get(job_type), make_ctx(job_type, payload, rec))
    return result, rec


async def eventually(probe: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


# --- errors and context ----------------------------------------------------------------------


def test_error_dicts_and_retry_classification() -> None:
    assert ProcessFailed("exit code 3", exit_code=3).to_dict() == {
        "type": "ProcessFailed",
        "message": "exit code 3",
        "retryable": True,
        "exit_code": 3,
    }
    assert PermanentError("bad").retryable is False
    assert InvalidPayload("payload.x: bad").retryable is False
    later = RetryLater("busy", defer_s=7, details={"status": 429})
    assert later.to_dict()["defer_s"] == 7.0 and later.retryable
    client = HTTPClientError("404", status=404)
    assert isinstance(client, PermanentError) and isinstance(client, HTTPStatusError)
    assert not client.retryable and client.status == 404
    assert HTTPStatusError("503", status=503).retryable

    wrapped = as_job_error(ValueError("boom"))
    assert wrapped.retryable and wrapped.message == "ValueError: boom"
    assert "ValueError" in (wrapped.traceback or "")
    assert as_job_error(later) is later


def test_job_errors_survive_pickling() -> None:
    # They cross the process-pool boundary, and have keyword-only constructors.
    for err in (RetryLater("busy", defer_s=3), HTTPClientError("nope", status=404), PermanentError("x")):
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err) and clone.to_dict() == err.to_dict()


async def test_context_log_splits_lines_and_progress_clamps() -> None:
    rec = Recorder()
    ctx = make_ctx("noop", {"a": 1}, rec, attempt=2)
    await ctx.log("one\ntwo\n")
    await ctx.log("", "stderr")
    await ctx.progress(150, "over")
    assert [(entry.stream, entry.line, entry.attempt) for entry in rec.logs] == [
        ("log", "one", 2),
        ("log", "two", 2),
        ("stderr", "", 2),
    ]
    assert rec.progress == [(100.0, "over")]
    assert ctx.payload == {"a": 1}
    with pytest.raises(ValueError):
        await ctx.log("x", "stdin")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="worker threads"):
        ctx.sync().log("from the loop thread would deadlock")


# --- registry --------------------------------------------------------------------------------


def test_registry_rules() -> None:
    reg = Registry()

    @reg.handler
    def plain(payload):
        return payload

    @reg.handler("custom.name-1")
    async def with_ctx(payload, ctx):
        return payload

    assert reg.names() == ["custom.name-1", "plain"]
    assert reg.get("plain").takes_ctx is False and reg.get("plain").mode == "thread"
    assert reg.get("custom.name-1").takes_ctx is True and reg.get("custom.name-1").mode == "async"
    with pytest.raises(UnknownJobType) as info:
        reg.get("missing")
    assert info.value.retryable is False

    def other(payload):
        return None

    with pytest.raises(ValueError, match="already registered"):
        reg.register(other, "plain")
    with pytest.raises(ValueError, match="invalid handler name"):
        reg.register(other, "has space")
    with pytest.raises(TypeError, match="process"):
        reg.register(with_ctx, "x", blocking="process")
    with pytest.raises(TypeError, match="module-level"):
        reg.register(other, "y", blocking="process")
    with pytest.raises(TypeError):
        reg.register(lambda: None, "z")


def test_builtins_are_registered() -> None:
    assert {"noop", "sleep", "shell", "python", "http"} <= set(registry.names())


# --- noop, sleep -----------------------------------------------------------------------------


async def test_noop() -> None:
    assert (await run("noop"))[0] == {"ok": True}
    assert (await run("noop", {"x": [1, 2]}))[0] == {"ok": True, "payload": {"x": [1, 2]}}


async def test_sleep_and_its_payload_validation() -> None:
    assert (await run("sleep", {"seconds": 0.05}))[0] == {"slept_s": 0.05}
    with pytest.raises(InvalidPayload, match=r"payload\.seconds"):
        await run("sleep", {"seconds": -1})
    with pytest.raises(InvalidPayload, match=r"payload\.seconds"):
        await run("sleep", {})


async def test_sleep_is_cancellable() -> None:
    task = asyncio.create_task(run("sleep", {"seconds": 30}))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)


# --- shell -----------------------------------------------------------------------------------


async def test_shell_separates_stdout_and_stderr() -> None:
    result, rec = await run("shell", {"command": ["sh", "-c", "echo out1; echo err1 >&2; echo out2"]})
    assert result["exit_code"] == 0 and result["duration_s"] >= 0
    assert rec.lines("stdout") == ["out1", "out2"]
    assert rec.lines("stderr") == ["err1"]


async def test_shell_nonzero_exit_is_a_retryable_process_failure() -> None:
    with pytest.raises(ProcessFailed) as info:
        await run("shell", {"command": ["sh", "-c", "echo boom >&2; exit 3"]})
    assert info.value.exit_code == 3 and info.value.retryable
    assert info.value.details["stderr_tail"] == ["boom"]
    assert info.value.to_dict()["exit_code"] == 3


async def test_shell_false_never_interprets_shell_syntax() -> None:
    _, rec = await run("shell", {"command": ["echo", "a; echo injected"]})
    assert rec.lines("stdout") == ["a; echo injected"]
    # A string is split with shlex, still without a shell.
    _, rec = await run("shell", {"command": "echo a; echo injected"})
    assert rec.lines("stdout") == ["a; echo injected"]
    # Only shell=true gets a shell.
    _, rec = await run("shell", {"command": "echo a; echo injected", "shell": True})
    assert rec.lines("stdout") == ["a", "injected"]


async def test_shell_env_cwd_and_inherit_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKYARD_TEST_INHERITED", "yes")
    script = 'echo "$FOO|${TASKYARD_TEST_INHERITED:-none}|$TASKYARD_ATTEMPT"; pwd'
    payload = {"command": ["sh", "-c", script], "env": {"FOO": "bar"}, "cwd": str(tmp_path)}
    _, rec = await run("shell", payload)
    assert rec.lines("stdout") == ["bar|yes|1", str(tmp_path)]
    _, rec = await run("shell", {**payload, "inherit_env": False})
    assert rec.lines("stdout")[0] == "bar|none|1"


async def test_shell_start_failures_are_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="executable not found: 'no-such-binary-xyz'"):
        await run("shell", {"command": ["no-such-binary-xyz", "--help"]})
    with pytest.raises(PermanentError, match=r"payload\.cwd"):
        await run("shell", {"command": ["true"], "cwd": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"command": 5}, r"payload\.command"),
        ({"command": []}, r"payload\.command"),
        ({"command": "echo 'unclosed"}, r"payload\.command"),
        ({"command": ["ls"], "shel": True}, r"payload\.shel"),
        ({"command": ["ls"], "shell": "false"}, r"payload\.shell"),
        ({"command": ["ls"], "shell": True}, "string when shell is true"),
        ({"command": ["ls"], "env": {"N": 1}}, r"payload\.env\.N"),
        ("ls", "payload must be a JSON object"),
    ],
)
async def test_shell_invalid_payload_names_the_field(payload: Any, field: str) -> None:
    with pytest.raises(InvalidPayload, match=field) as info:
        await run("shell", payload)
    assert info.value.retryable is False


async def test_shell_caps_long_lines() -> None:
    code = "import sys; sys.stdout.write('x' * 200000 + '\\nshort\\n' + 'y' * 70000)"
    _, rec = await run("shell", {"command": [sys.executable, "-c", code]})
    out = rec.lines("stdout")
    assert len(out) == 3
    assert out[0].startswith("x" * bi.MAX_LINE_BYTES) and out[0].endswith("truncated at 65536 bytes]")
    assert out[1] == "short"
    assert out[2].startswith("y" * bi.MAX_LINE_BYTES) and "truncated" in out[2]


async def test_shell_cancel_kills_the_whole_process_group() -> None:
    rec = Recorder()
    ctx = make_ctx("shell", {"command": ["sh", "-c", "echo $$; sleep 30 & sleep 30"]}, rec)
    task = asyncio.create_task(invoke(registry.get("shell"), ctx))
    pgid = int(await eventually(lambda: rec.lines("stdout") and rec.lines("stdout")[0]))
    sleeps = await eventually(
        lambda: len(s := [p for p in group_members(pgid) if p.name() == "sleep"]) == 2 and s
    )

    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < bi.KILL_GRACE_S + 2
    await eventually(lambda: not group_members(pgid), timeout=3)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in sleeps)


async def test_shell_stops_children_left_holding_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bi, "DRAIN_GRACE_S", 0.3)
    started = time.monotonic()
    result, rec = await run("shell", {"command": ["sh", "-c", "sleep 30 & echo main done"]})
    assert result["exit_code"] == 0
    assert time.monotonic() - started < 5
    assert rec.lines("stdout") == ["main done"]
    assert any("stopping processes" in line for line in rec.lines("log"))


# --- python ----------------------------------------------------------------------------------


async def test_python_inline_script_with_args() -> None:
    script = "import sys\nprint('hi', sys.argv[1:])\nprint('warn', file=sys.stderr)\n"
    result, rec = await run("python", {"script": script, "args": ["a", "b c"]})
    assert result["exit_code"] == 0
    assert rec.lines("stdout") == ["hi ['a', 'b c']"]
    assert rec.lines("stderr") == ["warn"]


async def test_python_path_failure_and_validation(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("import os, sys\nprint(os.getcwd())\nsys.exit(4)\n")
    with pytest.raises(ProcessFailed) as info:
        await run("python", {"path": "job.py", "cwd": str(tmp_path)})
    assert info.value.exit_code == 4
    with pytest.raises(PermanentError, match="script file not found"):
        await run("python", {"path": "nope.py", "cwd": str(tmp_path)})
    with pytest.raises(InvalidPayload, match="exactly one of script or path"):
        await run("python", {"script": "pass", "path": "job.py"})


async def test_python_script_is_killed_on_cancel() -> None:
    rec = Recorder()
    script = "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(30)\n"
    task = asyncio.create_task(invoke(registry.get("python"), make_ctx("python", {"script": script}, rec)))
    pid = int(await eventually(lambda: rec.lines("stdout") and rec.lines("stdout")[0]))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# --- user handlers: async, thread, process ---------------------------------------------------


async def test_async_handler_gets_the_context() -> None:
    reg = Registry()

    @reg.handler("aio")
    async def aio(payload, ctx):
        await ctx.log(f"got {payload['n']}")
        await ctx.progress(10)
        return ctx.worker_id

    result, rec = await run("aio", {"n": 1}, reg)
    assert result == "w-test" and rec.lines("log") == ["got 1"] and rec.progress == [(10.0, "")]


async def test_sync_handler_runs_in_a_thread_without_blocking_the_loop() -> None:
    reg = Registry()

    @reg.handler("blocking")
    def blocking(payload, ctx):
        ctx.log("start")
        time.sleep(0.5)  # would freeze the ticker if it ran on the loop
        ctx.progress(50, "half")
        ctx.log("end", "stderr")
        return {"thread": threading.get_ident(), "n": payload["n"]}

    @reg.handler("one_arg")
    def one_arg(payload):
        return payload * 2

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        result, rec = await run("blocking", {"n": 3}, reg)
    finally:
        ticking.cancel()
    assert ticks >= 10
    assert result["n"] == 3 and result["thread"] != threading.get_ident()
    assert [(entry.stream, entry.line) for entry in rec.logs] == [("log", "start"), ("stderr", "end")]
    assert rec.progress == [(50.0, "half")]
    assert (await run("one_arg", 21, reg))[0] == 42


async def test_cancelling_a_thread_handler_unwinds_it_at_its_next_report() -> None:
    reg = Registry()
    finished = threading.Event()

    @reg.handler("loop")
    def loop(payload, ctx):
        try:
            while True:
                ctx.log("tick")
                time.sleep(0.02)
        finally:
            finished.set()

    rec = Recorder()
    ctx = make_ctx("loop", None, rec)
    task = asyncio.create_task(invoke(reg.get("loop"), ctx))
    await eventually(lambda: rec.logs)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctx.cancelled.is_set()
    assert await asyncio.to_thread(finished.wait, 2)


JOBS_MODULE = """
import os

from taskyard_executor import PermanentError
from taskyard_executor.registry import Registry

registry = Registry()


@registry.handler(blocking="process")
def square(payload):
    return {"pid": os.getpid(), "value": payload["x"] ** 2}


@registry.handler(blocking="process")
def refuse(payload):
    raise PermanentError("refused", details={"x": payload["x"]})


@registry.handler(blocking="process")
def crash(payload):
    os._exit(1)


@registry.handler("greet")
def greet(payload, ctx):
    ctx.log("hello " + payload)
    return payload.upper()
"""

DEFAULT_REGISTRY_MODULE = """
from taskyard_executor import handler


@handler(__name__ + ".double")
async def double(payload):
    return payload * 2
"""


@pytest.fixture
def jobs_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"tyjobs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(JOBS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    # The pool's spawned workers copy sys.path when they start, so start them after the prepend.
    shutdown_process_pool()
    yield name
    shutdown_process_pool()
    sys.modules.pop(name, None)


async def test_registry_load_module_attr(jobs_module: str) -> None:
    reg = Registry()
    assert reg.load(f"{jobs_module}:registry") == ["crash", "greet", "refuse", "square"]
    result, rec = await run("greet", "bob", reg)
    assert result == "BOB" and rec.lines("log") == ["hello bob"]
    # A plain module path picks up the module's own `registry` too; reloading adds nothing new.
    other = Registry()
    assert other.load(jobs_module) == ["crash", "greet", "refuse", "square"]
    assert other.load(jobs_module) == []
    with pytest.raises(TypeError, match="not a taskyard_executor Registry"):
        Registry().load(f"{jobs_module}:os")


async def test_registry_load_into_the_default_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"tydefault_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(DEFAULT_REGISTRY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert registry.load(name) == [f"{name}.double"]
        assert (await run(f"{name}.double", 4))[0] == 8
    finally:
        sys.modules.pop(name, None)


async def test_process_pool_handler(jobs_module: str) -> None:
    reg = Registry()
    reg.load(f"{jobs_module}:registry")
    assert reg.get("square").mode == "process"
    result, _ = await run("square", {"x": 7}, reg)
    assert result["value"] == 49 and result["pid"] != os.getpid()
    # Typed errors come back from the child intact, so retry decisions still work.
    with pytest.raises(PermanentError, match="refused") as info:
        await run("refuse", {"x": 1}, reg)
    assert info.value.details == {"x": 1} and info.value.retryable is False


# --- http ------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        routes: dict[str, tuple[int, dict[str, str], bytes]] = {
            "/ok": (200, {"Content-Type": "application/json"}, b'{"hello": "world"}'),
            "/missing": (404, {"Content-Type": "text/plain"}, b"no such thing"),
            "/down": (503, {"Content-Type": "text/plain"}, b"try later"),
            "/limited": (429, {"Retry-After": "7"}, b"slow down"),
            "/big": (200, {"Content-Type": "text/plain"}, b"z" * (200 * 1024)),
        }
        status, headers, body = routes.get(self.path, (500, {}, b"?"))
        self._reply(status, headers, body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        echo = {"method": "POST", "body": json.loads(body), "token": self.headers.get("X-Token")}
        self._reply(201, {"Content-Type": "application/json"}, json.dumps(echo).encode())

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        return


@pytest.fixture
def http_base(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_http_200_with_json(http_base: str) -> None:
    result, _ = await run("http", {"url": f"{http_base}/ok"})
    assert result["status"] == 200 and result["json"] == {"hello": "world"}
    assert result["body"] == '{"hello": "world"}' and result["body_truncated"] is False
    assert result["headers"]["content-type"] == "application/json" and result["latency_ms"] >= 0


async def test_http_post_json_and_expected_status(http_base: str) -> None:
    payload = {
        "url": f"{http_base}/echo",
        "method": "post",
        "json": {"a": 1},
        "headers": {"X-Token": "t"},
        "expect_status": [201],
    }
    result, _ = await run("http", payload)
    assert result["json"] == {"method": "POST", "body": {"a": 1}, "token": "t"}
    result, _ = await run("http", {"url": f"{http_base}/missing", "expect_status": ["2xx", 404]})
    assert result["status"] == 404 and result["body"] == "no such thing"


async def test_http_404_is_permanent(http_base: str) -> None:
    with pytest.raises(PermanentError) as info:
        await run("http", {"url": f"{http_base}/missing"})
    err = info.value
    assert isinstance(err, HTTPClientError) and err.status == 404 and not err.retryable
    assert err.details["body"] == "no such thing"


async def test_http_503_is_retryable(http_base: str) -> None:
    with pytest.raises(HTTPStatusError) as info:
        await run("http", {"url": f"{http_base}/down"})
    assert info.value.status == 503 and info.value.retryable
    assert not isinstance(info.value, PermanentError)


async def test_http_429_honours_retry_after(http_base: str) -> None:
    with pytest.raises(RetryLater) as info:
        await run("http", {"url": f"{http_base}/limited"})
    assert info.value.defer_s == 7.0 and info.value.details["status"] == 429


async def test_http_body_is_capped(http_base: str) -> None:
    result, _ = await run("http", {"url": f"{http_base}/big"})
    assert len(result["body"]) == bi.MAX_BODY_BYTES and result["body_truncated"] is True
    assert "json" not in result


async def test_http_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Bound then closed: nothing listens there now.
    with pytest.raises(JobError) as info:
        await run("http", {"url": f"http://127.0.0.1:{port}/", "timeout_s": 5})
    assert info.value.retryable and not isinstance(info.value, PermanentError)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"url": "ftp://example.com/"}, r"payload\.url"),
        ({"url": "http://x/", "expect_status": "abc"}, r"payload\.expect_status"),
        ({"url": "http://x/", "json": {}, "body": "x"}, "either json or body"),
        ({"url": "http://x/", "method": "GET /"}, r"payload\.method"),
        ({"url": "http://x/", "headers": {"X-Name": "café"}}, r"payload\.headers"),
        ({}, r"payload\.url"),
    ],
)
async def test_http_invalid_payload(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPayload, match=field):
        await run("http", payload)


async def test_process_pool_recovers_from_a_dead_worker(jobs_module: str) -> None:
    reg = Registry()
    reg.load(f"{jobs_module}:registry")
    with pytest.raises(JobError, match="process pool worker died") as info:
        await run("crash", None, reg)
    assert info.value.retryable
    assert (await run("square", {"x": 3}, reg))[0]["value"] == 9
