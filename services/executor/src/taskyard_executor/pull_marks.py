"""Which exec consumers a pull just found empty, so a wake-up round can skip them."""

import time


class EmptyMarks:
    """A consumer counts as empty from a pull that came back short until either

    - a wake-up for it arrives after that pull was sent (a job may have been stored after the
      server answered), or
    - `ttl_s` passes: messages that become deliverable without a publish (a retry whose nak delay
      ran out, a redelivery after ack_wait, a job handed back by a draining worker) send no
      wake-up, so a mark is trusted no longer than the idle poll would have waited anyway.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._empty_since: dict[str, float] = {}
        self._woken_at: dict[str, float] = {}

    def found(self, durable: str, empty: bool, asked_at: float) -> None:
        """Record a pull's outcome; `asked_at` is when it was sent (time.monotonic())."""
        if empty:
            self._empty_since[durable] = asked_at
        else:
            self._empty_since.pop(durable, None)

    def woken(self, durable: str) -> None:
        self._woken_at[durable] = time.monotonic()

    def holds(self, durable: str) -> bool:
        """True while `durable` is known empty: skip it."""
        since = self._empty_since.get(durable)
        if since is None or time.monotonic() - since >= self.ttl_s:
            return False
        return self._woken_at.get(durable, float("-inf")) < since
