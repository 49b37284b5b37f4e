"""Raw JetStream pulls with `no_wait`, so one executor can honour strict priority.

Per NATS_NOTES: for each free slot try high, then normal, then low with a pull that returns at
once when empty; never `nc.request()` for raw pulls. One wildcard inbox serves every pull. Pulls
are issued one at a time: a status message (404 no messages, 408, 409) on the pull's own reply
subject, or the requested count of jobs, ends the current pull. Jobs arrive carrying their
original subject (not the inbox), so they are counted against whichever pull is current.
"""

import asyncio
import itertools
import json
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg


class _Pull:
    def __init__(self, req: str, wanted: int) -> None:
        self.req, self.wanted, self.received = req, wanted, 0
        self.done = asyncio.get_running_loop().create_future()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.received)


class Puller:
    def __init__(self, nc: NatsClient, stream: str, on_job: Callable[[Msg], None]) -> None:
        self.nc, self.stream, self.on_job = nc, stream, on_job
        self._inbox = nc.new_inbox()
        self._ids = itertools.count()
        self._current: _Pull | None = None
        self._lock = asyncio.Lock()
        self._sub = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        pull = self._current
        if msg.headers and msg.headers.get("Status") and not msg.data:
            if pull and msg.subject == f"{self._inbox}.{pull.req}":
                pull.finish()
            return
        # A job: run it even if its pull already timed out, or the delivery would sit unacked.
        self.on_job(msg)
        if pull:
            pull.received += 1
            if pull.received >= pull.wanted:
                pull.finish()

    async def pull(self, durable: str, batch: int, timeout: float = 5.0) -> int:
        """Ask for up to `batch` messages available now; returns how many arrived."""
        async with self._lock:
            pull = self._current = _Pull(str(next(self._ids)), batch)
            body = json.dumps({"batch": batch, "no_wait": True}).encode()
            await self.nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{durable}", body, reply=f"{self._inbox}.{pull.req}"
            )
            try:
                return await asyncio.wait_for(asyncio.shield(pull.done), timeout)
            except TimeoutError:
                return pull.received
            finally:
                self._current = None
