"""A job's journal: finished steps, checkpoint decisions, what it said, hand-backs and a stored outcome, rebuilt
from the job's own EVENTS subject. Read by the executor (replay on a retry or a continuation) and
by the API's REST-worker leases (a question already answered is answered again at once)."""

from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient

from .nats_util import read_subject
from .schemas import ENDED_OUTCOMES, JobEvent
from .topology import Topology


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
