"""Every worker's current heartbeat, read from the workers KV bucket: one way for all services.

Not nats-py's `kv.keys()`. It makes an ephemeral consumer per call that stays on the server for its
5-minute inactive threshold (measured: the 1,000th call in a row failed with 'maximum consumers
limit reached'), and it ends its listing on a consumer-info count that a message still on its way
to the client is not part of. The stream's own subject list is one request and a snapshot.
"""

import logging

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from .schemas import Heartbeat
from .topology import Topology

log = logging.getLogger("taskyard.heartbeats")


class HeartbeatReader:
    """Reads the workers bucket; NATS errors propagate (a failed read is not "no workers")."""

    def __init__(self, js: JetStreamContext, topo: Topology) -> None:
        self.js, self.bucket, self.stream = js, topo.workers_bucket, topo.workers_stream
        self.prefix = f"$KV.{self.bucket}."
        self._kv: KeyValue | None = None

    async def read(self) -> list[Heartbeat]:
        if self._kv is None:
            self._kv = await self.js.key_value(self.bucket)
        info = await self.js.stream_info(self.stream, subjects_filter=f"{self.prefix}>")
        beats = []
        for subject in info.state.subjects or {}:
            key = subject.removeprefix(self.prefix)
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                continue  # deleted (a clean exit leaves a marker) or expired since the listing
            if entry.value is None:
                continue  # an expired key can still answer, without a value: the worker is gone
            try:
                beats.append(Heartbeat.model_validate_json(entry.value))
            except ValidationError as err:
                log.warning(
                    "workers bucket key %s is not a Heartbeat: %s",
                    key,
                    err.errors(include_url=False, include_input=False)[:1],
                )
        return beats
