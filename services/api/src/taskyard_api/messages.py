"""A job's thread: what the job says (`ctx.say`) and asks (`ctx.ask`), what people answer or write.

No second mechanism: a question IS a checkpoint of kind `question`, and its answer IS the
checkpoint's decision. The thread only records them as messages, in the same transactions that
store them (the projector stores the question with its checkpoint row; CheckpointService stores
the answer with the decision). What the job says travels as a `said` event on the job's own EVENTS
subject, which is also its journal: a resumed job skips the messages it already posted.

Each message has a `key` that whoever writes it derives the same way, so projecting an event
twice, or a job re-running up to its next question, stores each message once.
"""

import json
import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.schemas import JobEvent

from .auth import Principal
from .failures import Forbidden, Invalid, NotFound, Refused, TooLarge
from .job_store import JobStore
from .models import Checkpoint, JobMessage
from .schemas import iso

AUTHOR_KINDS = ("job", "person", "taskyard")
TAKE_LIMIT = 1000


def message_out(m: JobMessage) -> dict[str, Any]:
    return {
        "id": m.id,
        "job_id": m.job_id,
        "author_kind": m.author_kind,
        "author": m.author,
        "text": m.text,
        "created_at": iso(m.created_at),
        "checkpoint_id": m.checkpoint_id,
    }


def _cut(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def text_of(value: Any) -> str:
    """An answer as thread text: a string as it is, any other JSON value as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def from_events(events: list[tuple[int, JobEvent]], known: set[str], max_chars: int) -> list[dict]:
    """The thread rows a projected batch makes, in stream order: each `said` event, and each
    question a `waiting` event asks (stored with its checkpoint row). Jobs not in `known` (pruned,
    of another install) get none."""
    rows: list[dict] = []
    for _, event in events:
        if event.job_id not in known:
            continue
        author = event.job_type or "job"
        if event.type == "said":
            key = f"say:{event.job_id}:{event.generation}:{int(event.data.get('n', 0))}"
            rows.append(
                _job_row(
                    key, event.job_id, author, str(event.data.get("text", "")), None, event.at, max_chars
                )
            )
        elif event.type == "waiting" and event.data.get("checkpoint", {}).get("kind") == "question":
            ck = event.data["checkpoint"]
            text = str(ck.get("message") or ck["name"])
            rows.append(question_row(event.job_id, author, text, ck["id"], event.at, max_chars))
    return rows


def question_row(job_id: str, author: str, text: str, ck_id: str, at: float, max_chars: int) -> dict:
    """The thread's row of a question the job asked (its checkpoint `ck_id`): stored once, whether
    an executor's `waiting` event or a REST worker's ask brings it."""
    return _job_row(f"ask:{ck_id}", job_id, author, text, ck_id, at, max_chars)


def _job_row(
    key: str, job_id: str, author: str, text: str, ck_id: str | None, at: float, max_chars: int
) -> dict:
    return {
        "key": key,
        "job_id": job_id,
        "author_kind": "job",
        "author": author[:100],
        "text": _cut(text, max_chars),
        "created_at": at,
        "checkpoint_id": ck_id,
    }


def decision_message(ck: Checkpoint, status: str, by: str, reason: str | None, answer: Any, now: float):  # noqa: ANN201
    """The message a decision on a question adds to the thread (None for approvals): the answer
    from the person, their refusal, or Taskyard's note that nobody answered in time."""
    if ck.kind != "question":
        return None
    if status == "answered":
        kind, author, text = "person", by, text_of(answer)
    elif status == "expired":
        kind, author, text = "taskyard", "taskyard", f"Nobody answered “{ck.message or ck.name}” in time."
    else:
        kind, author, text = "person", by, f"Declined to answer: {reason or 'no reason given'}"
    return JobMessage(
        key=f"answer:{ck.id}",
        job_id=ck.job_id,
        author_kind=kind,
        author=author[:100],
        text=text,
        created_at=now,
        checkpoint_id=ck.id,
    )


class MessageService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], checkpoints: Any, max_chars: int) -> None:
        self.sessions, self.checkpoints, self.max_chars = sessions, checkpoints, max_chars

    async def thread(self, job_id: str, after: int, limit: int) -> dict[str, Any]:
        async with self.sessions() as session:
            job = await JobStore.get(session, job_id)
            if job is None:
                raise NotFound(f"job {job_id} not found")
            rows = await session.scalars(
                select(JobMessage)
                .where(JobMessage.job_id == job_id, JobMessage.id > after)
                .order_by(JobMessage.id)
                .limit(limit)
            )
            messages = [message_out(m) for m in rows]
            question = await _open_question(session, job_id)
        return {
            "job_id": job_id,
            "job_status": job.status,
            "messages": messages,
            "open_question": _question_out(question) if question else None,
        }

    async def post(self, job_id: str, who: Principal, text: str, reply_to: str | None) -> dict[str, Any]:
        """Answer the open question (or `reply_to`) through the checkpoint path, or store a plain
        message; 409 once the job has ended, and nothing is stored then."""
        if len(text) > self.max_chars:
            raise TooLarge(
                f"text: {len(text)} characters; the limit is {self.max_chars} (TASKYARD_API_MESSAGE_MAX_CHARS)"
            )
        async with self.sessions() as session:
            job = await JobStore.get(session, job_id)
            if job is None:
                raise NotFound(f"job {job_id} not found")
            if job.finished:
                raise Refused(f"job {job_id} has ended ({job.status}): its thread takes no more messages")
            if reply_to is not None:
                question = await session.get(Checkpoint, reply_to)
                if question is None or question.job_id != job_id:
                    raise NotFound(f"reply_to: job {job_id} has no checkpoint {reply_to}")
                if question.kind != "question":
                    raise Refused(f"reply_to: checkpoint {reply_to} is an approval: approve or reject it")
            else:
                question = await _open_question(session, job_id)
            if question is None:
                if not (who.at_least("admin") or job.owner_id == who.id):
                    raise Forbidden(
                        f"only the job's owner or an admin may write to its thread; you are {who.name} ({who.role})"
                    )
                row = JobMessage(
                    key=f"msg:{uuid.uuid4().hex}",
                    job_id=job_id,
                    author_kind="person",
                    author=who.name[:100],
                    text=text,
                    created_at=time.time(),
                )
                session.add(row)
                await session.commit()
                return message_out(row)
            if question.choices and text not in question.choices:
                raise Invalid(f"text: the question {question.name!r} takes one of {question.choices}")
            ck_id = question.id
        # The checkpoint rules decide who may answer, and that it is answered once (409 after).
        await self.checkpoints.decide(ck_id, who, "answered", answer=text)
        async with self.sessions() as session:
            stored = await session.scalar(select(JobMessage).where(JobMessage.key == f"answer:{ck_id}"))
        if stored is None:  # pragma: no cover - decide() stores it in the same transaction
            raise Refused(f"checkpoint {ck_id} was answered but its message is missing")
        return message_out(stored)


async def _open_question(session: AsyncSession, job_id: str) -> Checkpoint | None:
    return await session.scalar(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.status == "pending", Checkpoint.kind == "question")
        .order_by(Checkpoint.created_at.desc())
        .limit(1)
    )


def _question_out(ck: Checkpoint) -> dict[str, Any]:
    return {
        "id": ck.id,
        "name": ck.name,
        "message": ck.message,
        "choices": ck.choices,
        "approvers": ck.approvers,
        "expires_at": iso(ck.expires_at),
    }
