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
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient

from taskyard_common.nats_util import read_subject
from taskyard_common.schemas import ENDED_OUTCOMES, JobEvent
from taskyard_common.topology import Topology

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


@dataclass(frozen=True)
class Decision:
    """What a person decided at a checkpoint."""

    approved: bool
    status: str  # approved | rejected | answered | expired
    reason: str | None = None
    answer: Any = None
    by: str | None = None


@dataclass
class Journal:
    """Finished steps and decisions of one job generation, rebuilt from its events."""

    steps: dict[str, Any] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    # Set when this generation already reported its final outcome (its ack was lost).
    outcome: str | None = None
    # Deliveries a draining or stopped worker handed back, per continuation (`resume`): they
    # count toward the message's deliveries but were no attempt (see `attempt_of`).
    handed_back: dict[int, int] = field(default_factory=dict)
    # What the job said on its thread (`ctx.say`), in order: a resumed run skips these many.
    said: list[str] = field(default_factory=list)

    def apply(self, event: JobEvent) -> None:
        if event.type in ENDED_OUTCOMES:
            self.outcome = event.type
        elif event.type == "handed_back":
            resume = int(event.data.get("resume", 0))
            self.handed_back[resume] = self.handed_back.get(resume, 0) + 1
        elif event.type == "said":
            n = int(event.data.get("n", len(self.said)))
            if n == len(self.said):  # a replayed duplicate (same n) is the same message
                self.said.append(str(event.data.get("text", "")))
        elif event.type == "step":
            self.steps[event.data["name"]] = event.data.get("result")
        elif event.type == "decided":
            d = event.data["decision"]
            self.decisions[event.data["name"]] = Decision(
                approved=d["status"] in ("approved", "answered"),
                status=d["status"],
                reason=d.get("reason"),
                answer=d.get("answer"),
                by=d.get("by"),
            )


def attempt_of(delivery: int, journal: Journal, resume: int) -> int:
    """The attempt a delivery is: its delivery count less the hand-backs of the same message (a
    continuation after a checkpoint is a new message, whose deliveries count from 1 again)."""
    return max(1, delivery - journal.handed_back.get(resume, 0))


async def read_journal(nc: NatsClient, topo: Topology, job_id: str, generation: int) -> Journal:
    """Replay the job's EVENTS subject, read from the stream leader (no consumer is left on the
    server, and a decision or step result already acked is always there)."""
    journal = Journal()
    for stored in await read_subject(nc, topo.events_stream, topo.event_subject(job_id), leader=True):
        event = JobEvent.model_validate_json(stored.data)
        if event.generation == generation:
            journal.apply(event)
    return journal


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
