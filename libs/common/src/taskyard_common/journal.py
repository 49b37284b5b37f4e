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
    # Per continuation (`resume`): the last journaled start or hand-back and its attempt, what
    # the next delivery counts its attempt from (`attempt_of`).
    marks: dict[int, tuple[str, int]] = field(default_factory=dict)
    # What the job said on its thread (`ctx.say`), in order: a resumed run skips these many.
    said: list[str] = field(default_factory=list)

    def apply(self, event: JobEvent) -> None:
        if event.type in ENDED_OUTCOMES:
            self.outcome = event.type
        elif event.type in ("started", "handed_back"):
            self.marks[int(event.data.get("resume", 0))] = (event.type, event.attempt)
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
    """The attempt a delivery of continuation `resume` is (a continuation after a checkpoint is a
    new message, whose attempts count from 1 again), from the job's journal, not from JetStream's
    delivery count: a delivery that never reached a worker (held by a client behind a hung node
    until its ack_wait ran out) counts for JetStream but was no attempt, and counting it sent jobs
    `dead` as WorkerLost when a node hung longer than about (max_attempts − 1) × ack_wait.

    Every later delivery's start is journaled, stored before its handler runs (the executor, a
    REST lease); a hand-back is journaled and spends no attempt. A first delivery's start goes in
    the executor's batch, not the journal: with nothing journaled this is the second attempt (one
    too many only if the first delivery never reached a worker either)."""
    if delivery <= 1:
        return 1
    mark = journal.marks.get(resume)
    if mark is None:
        return 2
    kind, attempt = mark
    return max(1, attempt if kind == "handed_back" else attempt + 1)


async def read_journal(nc: NatsClient, topo: Topology, job_id: str, generation: int) -> Journal:
    """Replay the job's EVENTS subject, read from the stream leader (no consumer is left on the
    server, and a decision or step result already acked is always there)."""
    journal = Journal()
    for stored in await read_subject(nc, topo.events_stream, topo.event_subject(job_id), leader=True):
        event = JobEvent.model_validate_json(stored.data)
        if event.generation == generation:
            journal.apply(event)
    return journal
