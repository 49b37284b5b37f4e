"""Built-in job types: ``noop``, ``sleep``, ``shell``, ``python`` and ``http``.

They are ordinary async handlers in the default registry, registered when this module is imported
(``taskyard_executor`` imports it). Their payload models live in :mod:`taskyard_common.payloads`,
where the API uses them too, to reject a bad payload at submit time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from taskyard_common.background import Background
from taskyard_common.payloads import (
    HttpPayload,
    PayloadError,
    PythonPayload,
    ShellPayload,
    SleepPayload,
    parse_payload,
)

from .checkpoints import PROTOCOL, SAY_PROTOCOL
from .child import Child, spawn
from .context import JobContext, Stream
from .errors import (
    HTTPClientError,
    HTTPStatusError,
    InvalidPayload,
    JobError,
    PermanentError,
    ProcessFailed,
    RetryLater,
)
from .registry import registry

if TYPE_CHECKING:  # imported by the http handler when it runs: ~70 ms of every executor's start-up
    import httpx

MAX_LINE_BYTES = 64 * 1024
"""A longer output line is cut here and marked, so one runaway line cannot flood the log stream."""
MAX_BODY_BYTES = 64 * 1024
"""The http handler keeps at most this much of a response body in the result."""
KILL_GRACE_S = 5.0
"""Between SIGTERM and SIGKILL of a job's process group."""
DRAIN_GRACE_S = 2.0
"""How long output may keep flowing after the main process exits (from children it left behind)."""
_STDERR_TAIL_LINES = 20
_READ_CHUNK = 64 * 1024
_MAX_RETRY_AFTER_S = 3600.0
COST_PROTOCOL = "::taskyard::cost "
"""A stdout line starting with this reports a cost from a script (see _script_cost)."""

M = TypeVar("M", bound=BaseModel)


# --- payload parsing -------------------------------------------------------------------------


def _parse(model: type[M], payload: Any) -> M:
    """Validate ``payload`` against ``model``; errors become InvalidPayload naming the field."""
    try:
        return parse_payload(model, payload)
    except PayloadError as exc:
        # Field errors also go in details (a list is easier for tools than the joined message).
        details = {"errors": exc.problems} if exc.per_field else None
        raise InvalidPayload(str(exc), details=details) from None


# --- noop, sleep -----------------------------------------------------------------------------


@registry.handler("noop")
async def noop(payload: Any) -> dict[str, Any]:
    """Do nothing; echo the payload back (if any) under ``payload``."""
    return {"ok": True} if payload is None else {"ok": True, "payload": payload}


@registry.handler("sleep")
async def sleep(payload: Any) -> dict[str, Any]:
    """Sleep ``seconds`` (cancellable at any moment)."""
    p = _parse(SleepPayload, payload)
    await asyncio.sleep(p.seconds)
    return {"slept_s": p.seconds}


# --- subprocesses (shell, python) ------------------------------------------------------------


@registry.handler("shell")
async def shell(payload: Any, ctx: JobContext) -> dict[str, Any]:
    """Run a command; a string is split with shlex unless ``shell`` is true (then ``/bin/sh -c``)."""
    p = _parse(ShellPayload, payload)
    if p.shell:
        assert isinstance(p.command, str)  # guaranteed by the model validator
        cmd: list[str] | str = p.command
    elif isinstance(p.command, str):
        try:
            cmd = shlex.split(p.command)
        except ValueError as exc:
            raise InvalidPayload(f"payload.command: cannot split: {exc}") from None
        if not cmd:
            raise InvalidPayload("payload.command: must be a non-empty string or list of strings")
    else:
        cmd = p.command
    cwd = _cwd(ctx, p.cwd)
    return await run_process(ctx, cmd, shell=p.shell, env=p.env, cwd=cwd, inherit_env=p.inherit_env)


def _cwd(ctx: JobContext, cwd: str | None) -> str | None:
    """A job with files runs in its working directory (a relative payload.cwd is inside it)."""
    if ctx.workdir is None:
        return cwd
    return os.path.join(ctx.workdir, cwd) if cwd else str(ctx.workdir)


@registry.handler("python")
async def python(payload: Any, ctx: JobContext) -> dict[str, Any]:
    """Run a Python script (inline ``script`` or a file ``path``) with this executor's interpreter."""
    p = _parse(PythonPayload, payload)
    cwd = _cwd(ctx, p.cwd)
    opts: dict[str, Any] = {"shell": False, "env": p.env, "cwd": cwd, "inherit_env": p.inherit_env}
    if p.path is not None:
        target = Path(cwd or ".") / p.path
        if not await asyncio.to_thread(target.is_file):
            raise PermanentError(f"payload.path: script file not found: {str(target)!r}")
        # -u: unbuffered, so output reaches the log as it is printed, not at exit.
        return await run_process(ctx, [sys.executable, "-u", p.path, *p.args], **opts)
    # A file rather than -c: argv strings are capped (~128 KiB on Linux), and tracebacks get a name.
    with tempfile.TemporaryDirectory(prefix="taskyard-") as tmp:
        script = Path(tmp) / "script.py"
        await asyncio.to_thread(script.write_text, p.script or "", encoding="utf-8")
        return await run_process(ctx, [sys.executable, "-u", str(script), *p.args], **opts)


async def run_process(
    ctx: JobContext,
    cmd: list[str] | str,
    *,
    shell: bool = False,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    inherit_env: bool = True,
) -> dict[str, Any]:
    """Run ``cmd`` in its own process group, streaming stdout/stderr lines to the job log.

    Returns ``{"exit_code": 0, "duration_s": ...}``; raises ProcessFailed on a non-zero exit and
    PermanentError if it cannot be started. Whatever way this returns or raises (including task
    cancellation on timeout or cancel request), the process group is gone afterwards: SIGTERM,
    up to :data:`KILL_GRACE_S`, then SIGKILL.
    """
    name = cmd if isinstance(cmd, str) else cmd[0]
    if cwd is not None and not await asyncio.to_thread(os.path.isdir, cwd):
        raise PermanentError(f"payload.cwd: not a directory: {cwd!r}")
    full_env = dict(os.environ) if inherit_env else {}
    full_env.update(
        TASKYARD_JOB_ID=ctx.job.id,
        TASKYARD_ATTEMPT=str(ctx.attempt),
        TASKYARD_WORKER_ID=ctx.worker_id,
        # For checkpoint_cli: this interpreter, and the decisions made so far.
        TASKYARD_PYTHON=sys.executable,
        TASKYARD_DECISIONS=json.dumps({k: dataclasses.asdict(d) for k, d in ctx.journal.decisions.items()}),
    )
    full_env.update(env or {})
    opts: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,  # a job waiting on a terminal that is not there would hang
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "env": full_env,
        "cwd": cwd,
        "start_new_session": True,  # own process group, so a kill reaches the children too
    }
    started = time.monotonic()
    try:
        # Reaped with wait4: its CPU time and peak RSS are the attempt's (child.py, meter.py).
        proc = await spawn(cmd, shell=shell, on_exit=ctx.meter.child, **opts)
    except (FileNotFoundError, NotADirectoryError):
        raise PermanentError(f"executable not found: {name!r}") from None
    except PermissionError:
        raise PermanentError(f"permission denied executing {name!r}") from None
    except OSError as exc:
        # Resource exhaustion (EMFILE, ENOMEM, EAGAIN) is worth another attempt later.
        raise JobError(f"cannot start {name!r}: {exc}") from exc

    assert proc.stdout is not None and proc.stderr is not None
    tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
    pumps = [
        asyncio.create_task(_pump(proc.stdout, "stdout", ctx, None)),
        asyncio.create_task(_pump(proc.stderr, "stderr", ctx, tail)),
    ]
    waiter = asyncio.create_task(proc.wait())
    try:
        rc = await _supervise(proc, waiter, pumps, ctx)
    finally:
        await _shielded(_reap(proc, waiter, pumps))
    for task in pumps:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    duration = round(time.monotonic() - started, 3)
    if rc != 0:
        details: dict[str, Any] = {"duration_s": duration, "stderr_tail": list(tail)}
        if rc < 0:
            try:
                sig_name = signal.Signals(-rc).name
            except ValueError:
                sig_name = f"signal {-rc}"
            raise ProcessFailed(f"killed by {sig_name}", exit_code=rc, details=details)
        raise ProcessFailed(f"exit code {rc}", exit_code=rc, details=details)
    return {"exit_code": 0, "duration_s": duration}


async def _supervise(
    proc: Child,
    waiter: asyncio.Task[int],
    pumps: list[asyncio.Task[None]],
    ctx: JobContext,
) -> int:
    """Wait for the main process; fail fast if a log pump fails (the pipes would fill and block it)."""
    # proc.wait() only returns once the pipes are closed too, and a background child can hold them
    # for ever; so also poll returncode, which is set as soon as the main process is reaped.
    pending: set[asyncio.Task[Any]] = {waiter, *pumps}
    while not waiter.done() and proc.returncode is None:
        done, pending = await asyncio.wait(pending, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    rc = proc.returncode
    assert rc is not None
    _, lingering = await asyncio.wait(pumps, timeout=DRAIN_GRACE_S)
    if lingering:
        # Background children inherited the pipes; the job is over when its main process is.
        await ctx.log(f"[taskyard] main process exited ({rc}); stopping processes still holding its output")
    return rc


async def _reap(proc: Child, waiter: asyncio.Task[int], pumps: list[asyncio.Task[None]]) -> None:
    """Leave nothing behind: the process group, the main process and the pipe readers."""
    pgid = proc.pid  # start_new_session made the child a session and group leader
    if _group_alive(pgid):
        _killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S
        while _group_alive(pgid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if _group_alive(pgid):
            _killpg(pgid, signal.SIGKILL)
    await asyncio.wait([waiter], timeout=KILL_GRACE_S)
    # Once the group is dead the pipes reach EOF, so the readers can flush the last lines.
    _, pending = await asyncio.wait(pumps, timeout=1.0)
    for task in (*pending, waiter):
        task.cancel()
    await asyncio.gather(*pending, waiter, return_exceptions=True)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """True while a non-zombie process is in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg also counts zombies, which no signal can remove; where there is no init reaping
    # orphans (a container without one) they would stall every kill for the full grace period.
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return True
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


_background = Background()


async def _shielded(coro: Coroutine[Any, Any, None]) -> None:
    """Await ``coro`` so that a second cancellation cannot interrupt it half-way (it completes)."""
    await asyncio.shield(_background.spawn(coro))


async def _pump(
    reader: asyncio.StreamReader, stream: Stream, ctx: JobContext, tail: deque[str] | None
) -> None:
    """Forward ``reader`` to the job log line by line, capping each line at MAX_LINE_BYTES."""

    async def emit(raw: bytes | bytearray, truncated: bool) -> None:
        text = bytes(raw).decode("utf-8", errors="replace").removesuffix("\r")
        if truncated:
            text += f" [... line truncated at {MAX_LINE_BYTES} bytes]"
        if stream == "stdout" and text.startswith(PROTOCOL):
            raise ctx.park_for_script(json.loads(text[len(PROTOCOL) :]))
        if stream == "stdout" and text.startswith(SAY_PROTOCOL):
            await ctx.say(text[len(SAY_PROTOCOL) :])  # skipped when a run before said it
            return
        if stream == "stdout" and text.startswith(COST_PROTOCOL):
            text = _script_cost(ctx, text)
        if tail is not None:
            tail.append(text[:500])
        await ctx.log(text, stream)

    buf = bytearray()
    skipping = False  # inside an over-long line whose head was already emitted
    while chunk := await reader.read(_READ_CHUNK):
        buf += chunk
        pos = 0
        while (nl := buf.find(b"\n", pos)) >= 0:
            if skipping:
                skipping = False
            else:
                await emit(buf[pos : min(nl, pos + MAX_LINE_BYTES)], nl - pos > MAX_LINE_BYTES)
            pos = nl + 1
        del buf[:pos]
        if len(buf) > MAX_LINE_BYTES:
            if not skipping:
                await emit(buf[:MAX_LINE_BYTES], True)
                skipping = True
            buf.clear()
    if buf and not skipping:
        await emit(buf, False)


def _script_cost(ctx: JobContext, text: str) -> str:
    """A script's ``::taskyard::cost {"amount": 0.02, "unit": "usd", "kind": "llm_tokens"}`` line:
    ctx.cost for scripts. The line stays in the log; a bad one says why there, and counts nothing."""
    try:
        item = json.loads(text[len(COST_PROTOCOL) :])
        if not isinstance(item, dict):
            raise ValueError("expected a JSON object")
        ctx.cost(item.get("amount", -1), item.get("unit", "usd"), item.get("kind", "llm_tokens"))
    except ValueError as exc:
        return f"{text} [taskyard: cost not recorded: {exc}]"
    return text


# --- http ------------------------------------------------------------------------------------


def status_matcher(spec: int | str | Iterable[int | str]) -> Callable[[int], bool]:
    """A predicate for ``expect_status``: codes (``200``, ``"204"``) and classes (``"2xx"``)."""
    items = [spec] if isinstance(spec, int | str) else list(spec)
    exact = {int(i) for i in items if isinstance(i, int) or i.isdigit()}
    classes = {int(i[0]) for i in items if isinstance(i, str) and not i.isdigit()}
    return lambda status: status in exact or status // 100 in classes


@registry.handler("http")
async def http(payload: Any) -> dict[str, Any]:
    """Make one HTTP request; fail unless the status matches ``expect_status`` (default 2xx)."""
    import httpx

    p = _parse(HttpPayload, payload)
    request: dict[str, Any] = {"headers": p.headers}
    if "json_body" in p.model_fields_set:
        request["json"] = p.json_body
    elif p.body is not None:
        request["content"] = p.body.encode("utf-8")
    what = f"{p.method} {p.url}"
    started = time.monotonic()
    try:
        # httpx's timeout bounds each phase; the outer one bounds the whole request, as users expect.
        async with asyncio.timeout(p.timeout_s):
            async with httpx.AsyncClient(timeout=p.timeout_s, follow_redirects=p.follow_redirects) as client:
                async with client.stream(p.method, p.url, **request) as resp:
                    latency_ms = round((time.monotonic() - started) * 1000, 1)
                    raw, truncated = await _read_capped(resp, MAX_BODY_BYTES)
    except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.TooManyRedirects) as exc:
        raise PermanentError(f"{what}: {exc}") from None
    except (TimeoutError, httpx.TimeoutException):
        raise JobError(f"{what}: timed out after {p.timeout_s}s") from None
    except httpx.RequestError as exc:
        # Connection refused, reset, DNS failure...: the far end may well be back next attempt.
        raise JobError(f"{what}: {type(exc).__name__}: {exc}") from None

    text = _decode(raw, resp.charset_encoding)
    status = resp.status_code
    if not status_matcher(p.expect_status)(status):
        _raise_for_status(what, status, resp.headers, text)
    result: dict[str, Any] = {
        "status": status,
        "latency_ms": latency_ms,
        "headers": dict(resp.headers),
        "body": text,
        "body_truncated": truncated,
    }
    if not truncated and "json" in resp.headers.get("content-type", ""):
        try:
            result["json"] = json.loads(text)
        except ValueError:
            result["json_error"] = "response declared JSON but did not parse"
    return result


async def _read_capped(resp: httpx.Response, cap: int) -> tuple[bytes, bool]:
    body = bytearray()
    async for chunk in resp.aiter_bytes():
        body += chunk
        if len(body) > cap:
            # Stop downloading: the rest would only be thrown away.
            return bytes(body[:cap]), True
    return bytes(body), False


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset name Python does not know
        return raw.decode("utf-8", errors="replace")


def _raise_for_status(what: str, status: int, headers: httpx.Headers, text: str) -> None:
    message = f"{what} returned HTTP {status}"
    details = {"status": status, "body": text[:1024]}
    if status in (429, 503) and (delay := _retry_after(headers.get("retry-after"))) is not None:
        raise RetryLater(message, defer_s=delay, details=details)
    if status >= 500 or status in (408, 429):
        raise HTTPStatusError(message, status=status, details={"body": details["body"]})
    raise HTTPClientError(message, status=status, details={"body": details["body"]})


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), capped; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)
