"""Per-attempt resource figures: CPU seconds, wall time, peak RSS, and reported costs.

How CPU is taken depends on where the handler runs (docs/costs.md):

- processes it starts (`shell`, `python`, anything calling `builtins.run_process`): the children's
  own rusage from ``wait4`` (user + system time of the process and every descendant it waited
  for; ``ru_maxrss`` of the largest of them) — ``measured: process``;
- ``blocking="thread"`` handlers: ``time.thread_time()`` of the worker thread around the call —
  exact for that thread, blind to threads the handler starts itself — ``measured: thread``;
- async handlers: the event loop thread's CPU time during each step of the handler's own
  coroutine (``Metered``), so other jobs sharing the loop are not counted; work handed to other
  tasks or threads is not counted either — ``measured: loop``;
- ``blocking="process"`` handlers: ``time.thread_time()`` inside the pool worker — ``measured:
  pool``.

Peak RSS of an in-process handler is the peak of the process it ran in (the executor, or the
pool worker) so far: an upper bound shared with every job that process ran.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from taskyard_common.usage import check_cost

# ru_maxrss is in KiB on Linux (bytes on macOS, where this over-reports by 1024: not a target).
_RSS_UNIT = 1024


def peak_rss_self() -> int:
    """This process's peak resident set size so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT


# The last reading of peak_rss_self on the event loop's thread: (time.monotonic() when, bytes).
_last_peak: tuple[float, int] = (float("-inf"), 0)


def peak_rss_after(ended: float) -> int:
    """The process's peak RSS as read at some moment after `ended` (time.monotonic()): the peak only
    grows, so any reading taken after a handler returned bounds what it used. Attempts that end
    together (a wave of equal jobs) share one reading instead of a getrusage each (~3 % of an
    executor's CPU for 20 ms jobs)."""
    global _last_peak
    if _last_peak[0] < ended:
        _last_peak = (time.monotonic(), peak_rss_self())
    return _last_peak[1]


class Meter:
    """What one attempt used. Thread-safe: thread handlers report costs from their thread."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._ended: float | None = None
        self._lock = threading.Lock()
        self.own_cpu_s = 0.0
        self.measured = "loop"
        self.own_rss: int | None = None
        self.child_cpu_s = 0.0
        self.child_rss: int | None = None
        self.children = 0
        self.costs: dict[tuple[str, str], float] = {}

    def cost(self, amount: Any, unit: str = "usd", kind: str = "llm_tokens") -> None:
        """Add what the handler says it spent (ValueError for a bad amount, unit or kind)."""
        value, unit, kind = check_cost(amount, unit, kind)
        with self._lock:
            self.costs[(unit, kind)] = self.costs.get((unit, kind), 0.0) + value

    def child(self, usage: resource.struct_rusage) -> None:
        """A process the handler started has been reaped with this rusage."""
        with self._lock:
            self.children += 1
            self.child_cpu_s += usage.ru_utime + usage.ru_stime
            rss = usage.ru_maxrss * _RSS_UNIT
            self.child_rss = max(self.child_rss or 0, rss)

    def own(self, cpu_s: float, measured: str, rss: int | None = None) -> None:
        with self._lock:
            self.own_cpu_s += cpu_s
            self.measured = measured
            self.own_rss = rss

    def stop(self) -> None:
        """The handler returned (or raised): the wall time ends here."""
        if self._ended is None:
            self._ended = time.monotonic()

    def figures(self) -> dict[str, Any]:
        """The outcome event's `usage` and `costs` (taskyard_common.usage reads them)."""
        ended = self._ended or time.monotonic()
        with self._lock:
            if self.children:
                measured, rss = "process", self.child_rss
            else:
                measured, rss = (
                    self.measured,
                    self.own_rss if self.own_rss is not None else peak_rss_after(ended),
                )
            data: dict[str, Any] = {
                "usage": {
                    "cpu_s": round(self.own_cpu_s + self.child_cpu_s, 6),
                    "wall_s": round(ended - self._started, 6),
                    "peak_rss_bytes": rss,
                    "measured": measured,
                }
            }
            if self.costs:
                data["costs"] = [
                    {"amount": round(amount, 9), "unit": unit, "kind": kind}
                    for (unit, kind), amount in sorted(self.costs.items())
                ]
        return data


class Metered:
    """Await a coroutine, adding the calling thread's CPU time during each of its steps to a total.

    The coroutine runs exactly as under ``await`` (values, exceptions and cancellation pass
    through); only the time between resuming it and its next suspension is counted, which is the
    CPU its own code used on the event loop thread.
    """

    def __init__(self, coro: Coroutine[Any, Any, Any], add: Callable[[float], None]) -> None:
        self._coro, self._add = coro, add

    def __await__(self) -> Generator[Any, Any, Any]:
        gen = self._coro.__await__()
        clock = time.thread_time
        send: Any = None
        error: BaseException | None = None
        spent = 0.0
        try:
            while True:
                began = clock()
                try:
                    step = gen.send(send) if error is None else gen.throw(error)
                except StopIteration as stop:
                    spent += clock() - began
                    return stop.value
                except BaseException:
                    spent += clock() - began
                    raise
                spent += clock() - began
                try:
                    send, error = (yield step), None
                except GeneratorExit:
                    gen.close()
                    raise
                except BaseException as exc:  # noqa: BLE001 - thrown in by the task: pass it on
                    send, error = None, exc
        finally:
            self._add(spent)


def in_thread(meter: Meter, fn: Callable[..., Any], *args: Any) -> Any:
    """Call `fn` in this (worker) thread, adding the thread's CPU time it took to `meter`."""
    began = time.thread_time()
    try:
        return fn(*args)
    finally:
        meter.own(time.thread_time() - began, "thread")


def pool_call(fn: Callable[..., Any], payload: Any) -> tuple[bool, Any, float, int]:
    """Run in a process-pool worker: (ok, result or exception, the CPU it took there, the worker's
    peak RSS). The exception travels as a value so its CPU is not lost; the caller raises it."""
    began = time.thread_time()
    try:
        ok, value = True, fn(payload)
    except Exception as exc:  # noqa: BLE001 - re-raised by the caller, in the executor
        ok, value = False, exc
    return ok, value, time.thread_time() - began, peak_rss_self()
