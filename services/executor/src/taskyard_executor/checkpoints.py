"""Human-in-the-loop pieces of a job: checkpoints, questions and memoized steps.

A job that reaches an undecided checkpoint is parked, not held: the runner reports `waiting` and
acks its message, so it keeps no slot and survives any executor restart. The API stores the
checkpoint; on a decision it publishes a `decided` event and republishes the job. Whoever runs it
next reads the job's journal — its own EVENTS subject — and replays finished steps and earlier
decisions instead of repeating them. Retries after a failure use the same journal.
"""

import hashlib
import re
import time
from typing import Any

# The journal (steps, decisions, hand-backs) is shared with the API's REST-worker leases.
from taskyard_common.journal import Decision, Journal, attempt_of, read_journal

__all__ = ["PROTOCOL", "Decision", "Journal", "Suspended", "attempt_of", "checkpoint_request", "read_journal"]

# A stdout line starting with this asks for a checkpoint from a script (see checkpoint_cli).
PROTOCOL = "::taskyard::checkpoint "
# ... and one starting with this says the rest of the line on the job's thread (ctx.say).
SAY_PROTOCOL = "::taskyard::say "
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Suspended(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Parks the job at a checkpoint. A BaseException, so a handler's `except Exception` can't eat it."""

    def __init__(self, checkpoint: dict) -> None:
        super().__init__(checkpoint["name"])
        self.checkpoint = checkpoint


def parse_duration(value: float | int | str) -> float:
    """Seconds from 90, "90", "30s", "15m", "24h" or "2d"."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"timeout {value!r}: expected seconds or a number with s, m, h or d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("timeout must be positive")
    return seconds


def checkpoint_request(
    job_id: str,
    generation: int,
    name: str,
    *,
    kind: str,
    message: str,
    data: Any,
    choices: list | None,
    approvers: str | list[str],
    on_reject: str,
    timeout: float | int | str,
) -> dict:
    """The checkpoint as the `waiting` event carries it to the API."""
    if on_reject not in ("fail", "return"):
        raise ValueError("on_reject must be 'fail' or 'return'")
    timeout_s = parse_duration(timeout)
    digest = hashlib.sha256(f"{job_id}/{generation}/{name}".encode()).hexdigest()[:24]
    return {
        "id": f"ck_{digest}",
        "name": name,
        "kind": kind,
        "message": message,
        "data": data,
        "choices": choices,
        "approvers": [approvers] if isinstance(approvers, str) else list(approvers),
        "on_reject": on_reject,
        "timeout_s": timeout_s,
        "expires_at": time.time() + timeout_s,
    }
