"""The per-attempt context handed to job handlers."""

from __future__ import annotations

import asyncio
import inspect
import math
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from taskyard_common.schemas import EventType, JobSpec, LogLine

from .checkpoints import Decision, Journal, Suspended, checkpoint_request
from .errors import PermanentError
from .meter import Meter

Stream = Literal["stdout", "stderr", "log"]
EmitLog = Callable[[LogLine], Awaitable[None]]
EmitProgress = Callable[[float, str], Awaitable[None]]
# Publishes a lifecycle event of this attempt and waits until JetStream has stored it.
EmitEvent = Callable[[EventType, dict], Awaitable[None]]
# Stores an output (a file or bytes) under a name; returns {"name", "size", "sha256"}.
SaveArtifact = Callable[[str, "Path | bytes"], Awaitable[dict[str, Any]]]

_STREAMS = frozenset({"stdout", "stderr", "log"})


class JobContext:
    """What a handler knows about its attempt, and how it reports back.

    The runner builds one per attempt, on its event loop (the loop is captured here so that
    :meth:`sync` can reach it from worker threads). ``emit_log`` and ``emit_progress`` are the
    runner's publishers; handlers call :meth:`log` and :meth:`progress` instead.
    """

    def __init__(
        self,
        job: JobSpec,
        *,
        attempt: int,
        worker_id: str,
        emit_log: EmitLog,
        emit_progress: EmitProgress,
        cancelled: asyncio.Event | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        emit_event: EmitEvent | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.job = job
        self.attempt = attempt
        self.worker_id = worker_id
        self.cancelled = cancelled if cancelled is not None else asyncio.Event()
        self._emit_log = emit_log
        self._emit_progress = emit_progress
        self._emit_event = emit_event
        self.journal = journal if journal is not None else Journal()
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._sync: SyncJobContext | None = None
        # Set by the runner for a job with input files or output globs (staging.Workspace).
        self.workdir: Path | None = None
        self.inputs: list[Path] = []
        self._save_artifact: SaveArtifact | None = None
        # How many `say` calls this run made: the first len(journal.said) were posted before.
        self._says = 0
        # What this attempt used and spent; reported with its outcome (meter.py).
        self.meter = Meter()

    def cost(self, amount: float, unit: str = "usd", kind: str = "llm_tokens") -> None:
        """Record what this attempt spent that Taskyard cannot measure (provider tokens, API fees).

        Several calls add up (per unit and kind); the total is reported with the attempt's outcome
        and stored per attempt, so a retried job counts every attempt's spend. `amount` is a finite
        number >= 0; `unit` and `kind` match ``[A-Za-z0-9_.:-]{1,64}`` (ValueError otherwise).
        """
        self.meter.cost(amount, unit, kind)

    async def save_artifact(self, data: bytes | str | os.PathLike[str], name: str) -> dict[str, Any]:
        """Store `data` as the job output `name` (a relative path; no absolute path, no `..`).

        `data` is bytes, or the path of a file (relative paths are read from the working
        directory when the job has one). Returns ``{"name", "size", "sha256"}``; the output is
        listed on the job (GET /api/v1/jobs/{id}/artifacts) once the attempt ends.
        """
        if self._save_artifact is None:
            raise RuntimeError("this context cannot store artifacts (no runner attached)")
        if isinstance(data, bytes | bytearray | memoryview):
            return await self._save_artifact(name, bytes(data))
        path = Path(data)
        if not path.is_absolute() and self.workdir is not None:
            path = self.workdir / path
        if not await asyncio.to_thread(path.is_file):
            raise ValueError(f"save_artifact: {str(path)!r} is not a file")
        return await self._save_artifact(name, path)

    @property
    def payload(self) -> Any:
        """The job's payload (any JSON value, ``None`` when absent)."""
        return self.job.payload

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The runner's event loop, captured at construction."""
        return self._loop

    @property
    def is_cancelled(self) -> bool:
        """True once the attempt was cancelled (cancel request or timeout)."""
        return self.cancelled.is_set()

    async def log(self, line: str, stream: Stream = "log") -> None:
        """Emit ``line`` to the job's log; a multi-line string becomes one LogLine per line."""
        if stream not in _STREAMS:
            raise ValueError(f"stream must be one of {sorted(_STREAMS)}, got {stream!r}")
        # An empty string is still a line the handler chose to print (e.g. a blank stdout line).
        for part in str(line).splitlines() or [""]:
            await self._emit_log(LogLine(stream=stream, line=part, attempt=self.attempt))

    async def progress(self, pct: float, message: str = "") -> None:
        """Report progress as a percentage; clamped to 0..100 so a sloppy handler cannot fail on it."""
        value = float(pct)
        if math.isnan(value):
            raise ValueError("progress pct must be a number, got NaN")
        await self._emit_progress(min(100.0, max(0.0, value)), message)

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` once per job: a resumed or retried job gets the stored result instead.

        The result must be JSON-serializable; it is stored in the job's journal before returning.
        """
        if name in self.journal.steps:
            return self.journal.steps[name]
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
        await self._event("step", {"name": name, "result": result})
        self.journal.steps[name] = result
        return result

    async def say(self, text: str) -> None:
        """Post `text` to the job's thread (GET /api/v1/jobs/{id}/messages; the UI and `taskyard
        chat` show it live). Journaled like a step: a job that runs again after a question or a
        lost worker does not post what it already said (the n-th say of a run is the n-th message),
        so say the same things in the same order up to where it stopped."""
        n = self._says
        self._says += 1
        if n < len(self.journal.said):
            return
        await self._event("said", {"n": n, "text": str(text)})
        self.journal.said.append(str(text))

    async def checkpoint(
        self,
        name: str,
        data: Any = None,
        *,
        message: str = "",
        timeout: float | str = "24h",
        approvers: str | list[str] = "admin",
        on_reject: str = "fail",
    ) -> Decision:
        """Pause until a person approves or rejects; returns the Decision.

        The job is parked (no slot held) until the decision; then it runs again from the start,
        with finished `step`s and earlier decisions replayed. A rejection fails the job with the
        reason unless `on_reject="return"`, in which case the Decision (approved=False) is returned.
        """
        decision = self.journal.decisions.get(name)
        if decision is None:
            raise Suspended(
                checkpoint_request(
                    self.job.id,
                    self.job.generation,
                    name,
                    kind="approval",
                    message=message,
                    data=data,
                    choices=None,
                    approvers=approvers,
                    on_reject=on_reject,
                    timeout=timeout,
                )
            )
        if not decision.approved and on_reject == "fail":
            raise PermanentError(f"checkpoint {name!r} {decision.status} by {decision.by}: {decision.reason}")
        return decision

    async def ask(
        self,
        question: str,
        choices: list[str] | None = None,
        *,
        name: str | None = None,
        timeout: float | str = "24h",
        approvers: str | list[str] = "admin",
    ) -> Any:
        """Pause until someone answers `question` (one of `choices` if given); returns the answer."""
        key = name or question
        decision = self.journal.decisions.get(key)
        if decision is None:
            raise Suspended(
                checkpoint_request(
                    self.job.id,
                    self.job.generation,
                    key,
                    kind="question",
                    message=question,
                    data=None,
                    choices=choices,
                    approvers=approvers,
                    on_reject="fail",
                    timeout=timeout,
                )
            )
        if decision.status != "answered":
            raise PermanentError(f"question {key!r} {decision.status} by {decision.by}: {decision.reason}")
        return decision.answer

    def park_for_script(self, request: dict) -> Suspended:
        """The Suspended signal for a checkpoint a shell/python script asked for (checkpoint_cli)."""
        return Suspended(
            checkpoint_request(
                self.job.id,
                self.job.generation,
                str(request["name"]),
                kind=request.get("kind", "approval"),
                message=request.get("message", ""),
                data=request.get("data"),
                choices=request.get("choices"),
                approvers=request.get("approvers") or "admin",
                on_reject=request.get("on_reject", "fail"),
                timeout=request.get("timeout", "24h"),
            )
        )

    async def _event(self, kind: EventType, data: dict) -> None:
        if self._emit_event is None:
            raise RuntimeError("this context cannot record events (no runner attached)")
        await self._emit_event(kind, data)

    def sync(self) -> SyncJobContext:
        """A blocking view of this context for handlers running in worker threads."""
        if self._sync is None:
            self._sync = SyncJobContext(self)
        return self._sync


class SyncJobContext:
    """Thread-side twin of :class:`JobContext`: ``log``/``progress`` are plain blocking functions.

    Each call schedules the coroutine on the runner's loop and waits for it, so lines keep their
    order and back-pressure from the log publisher reaches the handler. Once the attempt is
    cancelled, these calls raise :class:`asyncio.CancelledError` in the handler's thread: threads
    cannot be killed, so the next report is where a blocking handler gets unwound.
    """

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx

    @property
    def job(self) -> JobSpec:
        return self._ctx.job

    @property
    def payload(self) -> Any:
        return self._ctx.payload

    @property
    def attempt(self) -> int:
        return self._ctx.attempt

    @property
    def worker_id(self) -> str:
        return self._ctx.worker_id

    @property
    def is_cancelled(self) -> bool:
        """Poll this in long loops to stop early when the attempt is cancelled."""
        return self._ctx.is_cancelled

    def cost(self, amount: float, unit: str = "usd", kind: str = "llm_tokens") -> None:
        """:meth:`JobContext.cost` (it does not block: the amount is reported with the outcome)."""
        self._ctx.cost(amount, unit, kind)

    def log(self, line: str, stream: Stream = "log") -> None:
        """Blocking :meth:`JobContext.log`."""
        self._call(self._ctx.log(line, stream))

    def progress(self, pct: float, message: str = "") -> None:
        """Blocking :meth:`JobContext.progress`."""
        self._call(self._ctx.progress(pct, message))

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Blocking :meth:`JobContext.step` (`fn` runs in this thread)."""
        if name in self._ctx.journal.steps:
            return self._ctx.journal.steps[name]
        result = fn(*args)
        self._call(self._ctx._event("step", {"name": name, "result": result}))
        self._ctx.journal.steps[name] = result
        return result

    @property
    def workdir(self) -> Path | None:
        return self._ctx.workdir

    @property
    def inputs(self) -> list[Path]:
        return self._ctx.inputs

    def save_artifact(self, data: bytes | str | os.PathLike[str], name: str) -> dict[str, Any]:
        """Blocking :meth:`JobContext.save_artifact`."""
        return self._call(self._ctx.save_artifact(data, name))

    def say(self, text: str) -> None:
        """Blocking :meth:`JobContext.say`."""
        self._call(self._ctx.say(text))

    def checkpoint(self, name: str, data: Any = None, **options: Any) -> Decision:
        """Blocking :meth:`JobContext.checkpoint`."""
        return self._call(self._ctx.checkpoint(name, data, **options))

    def ask(self, question: str, choices: list[str] | None = None, **options: Any) -> Any:
        """Blocking :meth:`JobContext.ask`."""
        return self._call(self._ctx.ask(question, choices, **options))

    def _call(self, coro: Any) -> Any:
        if self._ctx.is_cancelled:
            coro.close()
            raise asyncio.CancelledError("job attempt was cancelled")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._ctx.loop:
            coro.close()
            # Waiting on the loop from the loop's own thread would deadlock forever.
            raise RuntimeError("ctx.sync() is for worker threads; use `await ctx.log(...)` on the event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._ctx.loop).result()
