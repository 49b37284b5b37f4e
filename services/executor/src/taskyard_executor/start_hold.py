"""Jobs' `started` events, held for a short window so a quick job reports once.

A job that ends within the window publishes only its outcome, carrying the held `started`
(taskyard_common.coalesce): one EVENTS message, one projection and one metrics read instead of
two. Once the window passes, the `started` goes out on its own, as it always did. Losing a held
`started` to a crash loses nothing that matters: the job's delivery is unacked, so it comes back
after ack_wait and the next attempt reports (the API sees the skipped attempt as a lost worker).

Pure bookkeeping: the worker calls `take` when a job ends and `due` from its release loop.
"""

from taskyard_common.schemas import JobEvent


class StartHold:
    """Held `started` events by job id, in the order they were held (one window for all, so that
    is also the order they fall due)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._held: dict[str, tuple[float, JobEvent]] = {}

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, event: JobEvent, now: float) -> None:
        self._held[event.job_id] = (now + self.window_s, event)

    def take(self, job_id: str) -> JobEvent | None:
        """The job's `started` if it is still held (the caller now reports it), else None."""
        held = self._held.pop(job_id, None)
        return held[1] if held else None

    def next_due(self) -> float | None:
        """When the oldest held `started` falls due; None when nothing is held."""
        for deadline, _ in self._held.values():
            return deadline
        return None

    def due(self, now: float) -> list[JobEvent]:
        """Remove and return the `started` events whose window has passed, oldest first."""
        out: list[JobEvent] = []
        for deadline, event in self._held.values():
            if deadline > now:
                break
            out.append(event)
        for event in out:
            del self._held[event.job_id]
        return out
