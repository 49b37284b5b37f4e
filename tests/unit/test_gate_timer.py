"""The gate timer's rounds: fire what is due, otherwise sleep until the nearest due time."""

import asyncio
import time

from taskyard_api.gate_timer import GateTimer


class Source:
    def __init__(self, due: float | None) -> None:
        self.name, self.due, self.fired = "fake", due, []

    async def next_due(self) -> float | None:
        return self.due

    async def fire(self, now: float) -> None:
        self.fired.append(now)
        self.due = None


def test_a_round_fires_what_is_due_and_asks_again_at_once():
    due, later = Source(time.time() - 0.01), Source(time.time() + 30)
    timer = GateTimer([due, later], asyncio.Event(), max_sleep_s=1.0)
    assert asyncio.run(timer.round()) == 0.0
    assert len(due.fired) == 1 and later.fired == []
    # Nothing due now: sleep until the nearest time, at most max_sleep_s.
    assert asyncio.run(timer.round()) == 1.0
    soon = Source(time.time() + 0.2)
    timer.add(soon)
    assert 0.15 < asyncio.run(timer.round()) <= 0.2


def test_a_stored_earlier_time_wakes_the_sleeping_timer():
    async def scenario() -> float:
        wake = asyncio.Event()
        source = Source(None)
        timer = GateTimer([source], wake, max_sleep_s=5.0)
        task = asyncio.create_task(timer.run())
        await asyncio.sleep(0.05)  # asleep for up to 5 s
        started = time.monotonic()
        source.due = time.time()
        wake.set()
        while not source.fired:
            await asyncio.sleep(0.005)
        timer.stop()
        await task
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0
