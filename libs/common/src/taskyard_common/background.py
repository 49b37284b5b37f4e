"""Tasks their starter does not await: an announcement's acks, a follow-up publish, a relayed call.

The event loop keeps only weak references to tasks, so each needs a holder until it ends; the
holder is also what the process waits for when it stops, so that work already begun (a publish
whose acks are out) ends instead of being dropped with the loop.
"""

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Future] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Awaitable[T]) -> "asyncio.Future[T]":
        """Run `work` as a task of its own, held here until it ends."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def finish(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for the tasks running now and those they spawn meanwhile, then
        cancel the rest. Returns how many were cancelled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)
        late = list(self._tasks)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        return len(late)
