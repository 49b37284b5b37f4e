"""Raw JetStream pulls: `no_wait` rounds for strict priority, and long pulls while idle.

Per NATS_NOTES: for each free slot try high, then normal, then low with a pull that returns at
once when empty; never `nc.request()` for raw pulls. One wildcard inbox serves every pull. Round
pulls are issued one at a time: a status message (404 no messages, 408, 409) on the pull's own reply
subject, or the requested count of jobs, ends the current pull.

Long-poll only when all are empty: an idle worker *arms* one long pull (batch 1, `expires`) per
consumer it has a free slot for, so the server hands it a job the moment the job is stored, without
waiting for the API's wake-up and a pull round trip. At most one armed pull per consumer, and never
more armed pulls plus round requests than free slots, so nothing is delivered that has no slot.

Jobs arrive carrying their original subject (not the inbox), so a job is matched to a pull by the
consumer named in its ack subject: an armed pull's consumer is never pulled in a round.
"""

import asyncio
import itertools
import json
import time
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from taskyard_common.nats_util import consumer_of

# An armed pull the server never answered (its connection was replaced) is forgotten this long
# after its own expiry.
ARMED_GRACE_S = 1.0


class _Pull:
    def __init__(self, req: str, wanted: int) -> None:
        self.req, self.wanted, self.received = req, wanted, 0
        self.done = asyncio.get_running_loop().create_future()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.received)


class Puller:
    def __init__(
        self,
        nc: NatsClient,
        stream: str,
        on_job: Callable[[Msg], None],
        on_armed_end: Callable[[str, bool], None],
    ) -> None:
        self.nc, self.stream, self.on_job, self.on_armed_end = nc, stream, on_job, on_armed_end
        self._inbox = nc.new_inbox()
        self._ids = itertools.count()
        self._current: _Pull | None = None
        self._lock = asyncio.Lock()
        self._sub: Subscription | None = None
        self._armed: dict[str, tuple[str, float]] = {}  # durable -> (request id, forget after)

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        pull = self._current
        if msg.headers and msg.headers.get("Status") and not msg.data:
            req = msg.subject.rsplit(".", 1)[-1]
            if pull and req == pull.req:
                pull.finish()
            else:  # an armed pull expired (408) or was refused (409)
                for durable, (armed_req, _) in list(self._armed.items()):
                    if armed_req == req:
                        self._end_armed(durable, delivered=False)
            return
        # A job: run it even if its pull already timed out, or the delivery would sit unacked.
        self.on_job(msg)
        durable = consumer_of(msg)
        if durable in self._armed:
            self._end_armed(durable, delivered=True)
        elif pull:
            pull.received += 1
            if pull.received >= pull.wanted:
                pull.finish()

    def _end_armed(self, durable: str, delivered: bool) -> None:
        if self._armed.pop(durable, None) is not None:
            self.on_armed_end(durable, delivered)

    def armed_count(self) -> int:
        """Armed pulls not yet answered: each may still bring one job (and needs a slot for it).
        Forgets those past their expiry and grace, whose answer will never come."""
        now = time.monotonic()
        self._armed = {d: e for d, e in self._armed.items() if e[1] > now}
        return len(self._armed)

    def is_armed(self, durable: str) -> bool:
        return durable in self._armed

    async def arm(self, durable: str, expires_s: float) -> None:
        """A long pull for one job on `durable`, answered when a job is stored or after `expires_s`."""
        req = str(next(self._ids))
        self._armed[durable] = (req, time.monotonic() + expires_s + ARMED_GRACE_S)
        body = json.dumps({"batch": 1, "expires": int(expires_s * 1e9)}).encode()
        await self.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{durable}", body, reply=f"{self._inbox}.{req}"
        )

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
