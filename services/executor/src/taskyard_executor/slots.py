"""When a delivery holds one of the executor's slots, and how many more the worker may pull.

A slot is busy from a job's delivery until its handler returns. Reporting the outcome (publish,
wait for JetStream's ack, ack the delivery) costs round trips but no handler time, so it goes on
as *finishing* without a slot: the next job is pulled and started meanwhile.

Finishing deliveries are still unacked, so they are bounded too: while more than `size` are
finishing (NATS slow or away), no slot counts as free and the worker pulls nothing. An executor
thus never holds more than 2 × `size` unacked deliveries, whatever happens to its reports.

Pure bookkeeping, keyed by whatever identifies a delivery (the worker uses its task).
"""

from collections.abc import Hashable


class Slots:
    def __init__(self, size: int) -> None:
        self.size = size
        self._busy: set[Hashable] = set()
        self._finishing: set[Hashable] = set()

    @property
    def busy(self) -> int:
        return len(self._busy)

    @property
    def finishing(self) -> int:
        return len(self._finishing)

    def take(self, key: Hashable) -> None:
        """A delivery arrived: it holds a slot from now (before its task first runs, so the pull
        loop never counts that slot free and fetches a lower priority for it)."""
        self._busy.add(key)

    def release(self, key: Hashable) -> bool:
        """Its handler returned: the slot is free, the delivery is finishing. False if it held none."""
        if key not in self._busy:
            return False
        self._busy.remove(key)
        self._finishing.add(key)
        return True

    def end(self, key: Hashable) -> None:
        """The delivery is acked, handed back or left for redelivery: it is forgotten."""
        self._busy.discard(key)
        self._finishing.discard(key)

    def free(self) -> int:
        """Slots the worker may fill now: the idle ones, less the finishing deliveries beyond `size`."""
        return max(0, self.size - len(self._busy) - max(0, len(self._finishing) - self.size))
