"""ctx.say is journaled like a step, and the projector makes one thread row per message."""

import asyncio

from taskyard_api.messages import from_events
from taskyard_common.schemas import JobEvent, JobSpec
from taskyard_executor.checkpoints import Journal
from taskyard_executor.context import JobContext


def said(job_id: str, n: int, text: str, gen: int = 0) -> JobEvent:
    return JobEvent(job_id=job_id, type="said", generation=gen, job_type="t", data={"n": n, "text": text})


async def _run_again(journal: Journal) -> list[dict]:
    posted: list[dict] = []

    async def emit_event(kind, data):  # noqa: ANN001, ANN202
        posted.append({"kind": kind, **data})

    async def nothing(*_):  # noqa: ANN002, ANN202
        return None

    ctx = JobContext(
        JobSpec(id="J", type="t"),
        attempt=1,
        worker_id="w",
        emit_log=nothing,
        emit_progress=nothing,
        emit_event=emit_event,
        journal=journal,
    )
    for text in ("one", "two", "three"):
        await ctx.say(text)
    return posted


def test_a_resumed_run_posts_only_what_it_had_not_said():
    journal = Journal()
    for event in (said("J", 0, "one"), said("J", 1, "two"), said("J", 1, "two")):  # one replayed twice
        journal.apply(event)
    assert journal.said == ["one", "two"]
    posted = asyncio.run(_run_again(journal))
    assert posted == [{"kind": "said", "n": 2, "text": "three"}]
    assert journal.said == ["one", "two", "three"]


def test_a_first_run_posts_every_message_numbered_in_order():
    posted = asyncio.run(_run_again(Journal()))
    assert [(p["n"], p["text"]) for p in posted] == [(0, "one"), (1, "two"), (2, "three")]


def test_thread_rows_keep_stream_order_cut_long_text_and_skip_unknown_jobs():
    question = JobEvent(
        job_id="J",
        type="waiting",
        job_type="t",
        data={"checkpoint": {"id": "ck_1", "name": "q1", "kind": "question", "message": "Which?"}},
    )
    approval = JobEvent(
        job_id="J", type="waiting", data={"checkpoint": {"id": "ck_2", "name": "a", "kind": "approval"}}
    )
    events = [(1, said("J", 0, "x" * 20)), (2, question), (3, approval), (4, said("K", 0, "gone"))]
    rows = from_events(events, {"J"}, max_chars=10)
    assert [(r["key"], r["text"], r["checkpoint_id"]) for r in rows] == [
        ("say:J:0:0", "x" * 9 + "…", None),
        ("ask:ck_1", "Which?", "ck_1"),
    ]
