"""Supervised background work: every long-lived task of every service runs through one Supervisor.

A task that raises is logged, counted (`taskyard_<service>_task_restarts_total{task}`) and started
again after a capped exponential backoff; while it waits, `checks()` names it, so the service's
`/readyz` answers 503 instead of staying green over work that has stopped. A task that returns is
finished (not restarted). Periodic work ("every N s do X; on failure log and try next round") is
`every()`: a failing round is logged and counted (`..._task_failures_total{task}`), the loop goes on.
"""

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger("taskyard.supervise")

Unit = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Backoff:
    """Delay before restart n (1-based): initial_s · 2^(n-1), at most max_s. A task that ran
    `healthy_after_s` before it died starts again from initial_s (a crash a day is no crash loop)."""

    initial_s: float = 1.0
    max_s: float = 10.0
    healthy_after_s: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** max(0, failures - 1))


@dataclass
class _Task:
    name: str
    unit: Unit
    stop_hook: Callable[[], None] | None
    backoff: Backoff
    task: asyncio.Task | None = None
    failures: int = 0  # consecutive deaths since it last ran healthy
    down: str | None = None  # why it is down, while it waits to restart
    restart_at: float = 0.0  # monotonic


class Supervisor:
    """Runs, restarts and stops a service's background tasks; see the module docstring."""

    def __init__(self, service: str, registry: CollectorRegistry, backoff: Backoff | None = None) -> None:
        self.service, self.backoff = service, backoff or Backoff()
        self._tasks: dict[str, _Task] = {}
        self._stopping = False
        self.restarts, self.failures = _counters(service, registry)

    def start(
        self,
        name: str,
        unit: Unit,
        *,
        stop: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        """Run `unit()` until it returns, starting it again whenever it raises.

        `stop`, if given, asks the unit to end by itself (e.g. finish the batch in hand); `stop()`
        of the supervisor calls it and waits before cancelling. Units without one are cancelled.
        `backoff` replaces the supervisor's for this task.
        """
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        entry = self._tasks[name] = _Task(name, unit, stop, backoff or self.backoff)
        self.restarts.labels(name)  # exported at 0, so increase() sees the first restart
        entry.task = asyncio.create_task(self._keep(entry), name=f"taskyard-{self.service}-{name}")

    def every(
        self,
        name: str,
        interval_s: float | None,
        fn: Unit,
        *,
        wake: asyncio.Event | None = None,
        settle_s: float = 0.0,
        at_start: bool = False,
        level: int = logging.WARNING,
    ) -> None:
        """Call `fn()` every `interval_s` (and whenever `wake` is set, if given; `interval_s=None`:
        only then). A round that raises is logged at `level` and counted; the next round follows as
        usual. `settle_s`: a woken round waits that long first, so a burst of wake-ups is one round.
        `at_start`: the first round runs at once instead of after the first wait."""
        if interval_s is None and wake is None:
            raise ValueError("every() needs an interval, a wake event or both")
        self.failures.labels(name)

        async def rounds() -> None:
            first = at_start
            while True:
                if not first:
                    await _wait(interval_s, wake)
                    if settle_s and wake is not None and wake.is_set():
                        await asyncio.sleep(settle_s)
                first = False
                if wake is not None:
                    wake.clear()  # set again during fn: one more round right after
                try:
                    await fn()
                except Exception as exc:  # noqa: BLE001 - a failed round is logged, counted, retried
                    self.failures.labels(name).inc()
                    log.log(level, "%s: %s failed, will try again: %s", self.service, name, _say(exc))

        self.start(name, rounds)

    def checks(self) -> dict[str, str]:
        """`{"task:<name>": "ok" | "down: <error>, restarting in 2 s"}` for every running task."""
        now = time.monotonic()
        out = {}
        for entry in self._tasks.values():
            if entry.task is None or entry.task.done():
                continue  # finished (returned): nothing to watch any more
            if entry.down is None:
                out[f"task:{entry.name}"] = "ok"
            else:
                left = max(0.0, entry.restart_at - now)
                out[f"task:{entry.name}"] = f"down: {entry.down}, restarting in {left:.0f} s"
        return out

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the tasks with a stop hook to end, cancel the others, wait up to `timeout_s` for all
        (then cancel the stragglers too)."""
        self._stopping = True
        tasks = [e.task for e in self._tasks.values() if e.task is not None and not e.task.done()]
        for entry in self._tasks.values():
            if entry.task is None or entry.task.done():
                continue
            if entry.stop_hook is not None and entry.down is None:
                entry.stop_hook()
            else:
                entry.task.cancel()
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=timeout_s)
        for task in stuck:
            task.cancel()
        if stuck:
            log.warning(
                "%s shutdown: %d background tasks did not stop in %.0f s", self.service, len(stuck), timeout_s
            )
            await asyncio.wait(stuck, timeout=1)
        for task in tasks:  # retrieve the outcome, so asyncio does not log "never retrieved"
            if task.done() and not task.cancelled() and (err := task.exception()) is not None:
                log.warning("%s shutdown: %s ended with %s", self.service, task.get_name(), _say(err))

    async def _keep(self, entry: _Task) -> None:
        while not self._stopping:
            started = time.monotonic()
            try:
                await entry.unit()
            except Exception as exc:  # noqa: BLE001 - the point of supervision: restart, say so
                if self._stopping:
                    return
                if time.monotonic() - started >= entry.backoff.healthy_after_s:
                    entry.failures = 0
                entry.failures += 1
                delay = entry.backoff.delay(entry.failures)
                entry.down, entry.restart_at = _say(exc), time.monotonic() + delay
                self.restarts.labels(entry.name).inc()
                log.warning(
                    "%s: task %s died (%s); restarting in %.1f s",
                    self.service,
                    entry.name,
                    entry.down,
                    delay,
                    # The traceback once per crash loop: enough to find a bug, not a log flood.
                    exc_info=exc if entry.failures == 1 else None,
                )
                await asyncio.sleep(delay)
                entry.down = None
            else:
                if not self._stopping:
                    log.info("%s: task %s finished", self.service, entry.name)
                return


# One pair per (registry, service): an app built twice in one process (tests) shares its registry.
_COUNTERS: "weakref.WeakKeyDictionary[CollectorRegistry, dict[str, tuple[Counter, Counter]]]" = (
    weakref.WeakKeyDictionary()
)


def _counters(service: str, registry: CollectorRegistry) -> tuple[Counter, Counter]:
    known = _COUNTERS.setdefault(registry, {})
    if service not in known:
        known[service] = (
            Counter(
                f"taskyard_{service}_task_restarts",
                "Background tasks restarted after they died (raised), by task",
                ["task"],
                registry=registry,
            ),
            Counter(
                f"taskyard_{service}_task_failures",
                "Rounds of periodic background tasks that failed (the task goes on), by task",
                ["task"],
                registry=registry,
            ),
        )
    return known[service]


async def _wait(interval_s: float | None, wake: asyncio.Event | None) -> None:
    if wake is None:
        assert interval_s is not None  # every() refuses neither
        await asyncio.sleep(interval_s)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(interval_s):
            await wake.wait()


def _say(exc: BaseException) -> str:
    """One short line for logs and /readyz: the error's first line, or its type when it has none."""
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
