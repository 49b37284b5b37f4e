"""The api's projector behind FastStream's batch pull subscriber: NATS in memory (TestNatsBroker),
a real SQLite database. What is projected, what is skipped, and how each batch is acked, handed
back or terminated."""

import pytest
from faststream.nats import TestNatsBroker
from faststream.nats.testing import PatchedMessage, build_message
from sqlalchemy import insert, select, text

from taskyard_api.db import make_engine, make_sessionmaker
from taskyard_api.http_metrics import EVENTS_UNPROJECTABLE
from taskyard_api.models import Base, JobEventRow
from taskyard_api.projector import PER_MESSAGE, Projector, _jobs, is_outage
from taskyard_common.schemas import EventBatch, JobEvent
from taskyard_common.settings import DbSettings, NatsSettings
from taskyard_common.topology import Topology

TOPO = Topology(NatsSettings(prefix="fs"))


def _job(job_id: str) -> dict:
    return dict(
        id=job_id, type="noop", queue="q", priority="normal", status="queued", timeout_s=1,
        max_attempts=1, backoff={}, labels={}, owner_id="o", generation=0, resume=0, attempt=0,
        last_event_seq=0, created_at=0.0, updated_at=0.0,
    )  # fmt: skip


@pytest.fixture
def acks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(EVENTS seq, ack|nak|term) of every in-memory message, in order."""
    seen: list[tuple[int, str]] = []

    def record(kind: str):
        async def call(self: PatchedMessage, *args: object, **kwargs: object) -> None:
            seen.append((int(self.reply.split(".")[5]), kind))

        return call

    for kind in ("ack", "nak", "term"):
        monkeypatch.setattr(PatchedMessage, kind, record(kind))
    return seen


@pytest.fixture
async def sessions(tmp_path):
    engine = make_engine(DbSettings(url=f"sqlite+aiosqlite:///{tmp_path}/p.db"))
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(text("PRAGMA foreign_keys=OFF"))  # one connection: no api_keys rows needed
        await conn.execute(insert(_jobs), [_job("a"), _job("b")])
    yield make_sessionmaker(engine)
    await engine.dispose()


async def _nothing_follows(_opened):
    return []


def projector(sessions) -> Projector:
    return Projector(None, TOPO, sessions, 100, _nothing_follows)  # type: ignore[arg-type]


def ack_subject(seq: int) -> str:
    return f"$JS.ACK.{TOPO.events_stream}.{TOPO.projector_durable}.1.{seq}.{seq}.0.0"


def started(job_id: str) -> bytes:
    ev = JobEvent(job_id=job_id, type="started", attempt=1, worker_id="w1", queue="q", job_type="noop")
    return ev.model_dump_json().encode()


async def publish(broker, body: bytes, subject: str, seq: int) -> None:
    await broker.publish(body, subject, stream=TOPO.events_stream, reply_to=ack_subject(seq))


async def state(sessions, job_id: str) -> tuple[str, list[tuple[int | None, str]]]:
    async with sessions() as s:
        status = (await s.execute(select(_jobs.c.status).where(_jobs.c.id == job_id))).scalar_one()
        rows = (
            await s.execute(
                select(JobEventRow.stream_seq, JobEventRow.type)
                .where(JobEventRow.job_id == job_id)
                .order_by(JobEventRow.id)
            )
        ).all()
    return status, [tuple(r) for r in rows]


async def test_a_job_event_is_projected_then_acked(sessions, acks) -> None:
    p = projector(sessions)
    async with TestNatsBroker(p.consumer.build()) as broker:
        await publish(broker, started("a"), TOPO.event_subject("a"), 7)
    assert await state(sessions, "a") == ("running", [(7 * PER_MESSAGE, "started")])
    assert acks == [(7, "ack")]
    assert p.consumer.error is None


async def test_the_apis_own_queued_batch_and_a_malformed_body_are_skipped_and_acked(sessions, acks) -> None:
    p = projector(sessions)
    batch = EventBatch(events=[JobEvent(job_id="a", type="queued", queue="q")]).model_dump_json().encode()
    async with TestNatsBroker(p.consumer.build()) as broker:
        await publish(broker, batch, TOPO.queued_subject, 3)
        await publish(broker, b"{not json", TOPO.event_subject("a"), 4)
    assert await state(sessions, "a") == ("queued", [])
    assert acks == [(3, "ack"), (4, "ack")]
    assert p.consumer.error is None


async def test_an_unprojectable_event_in_a_batch_is_terminated_and_the_rest_projected(sessions, acks) -> None:
    p = projector(sessions)
    # A `waiting` event without its checkpoint: projecting it raises a KeyError (not an outage).
    poison = JobEvent(job_id="b", type="waiting", attempt=1, queue="q").model_dump_json().encode()
    before = EVENTS_UNPROJECTABLE._value.get()
    async with TestNatsBroker(p.consumer.build()) as broker:
        # TestNatsBroker hands a batch subscriber one message per publish; a batch of three goes
        # straight into the subscriber, through FastStream's parser, decoder and handler as a fetch would.
        msgs = [
            await build_message(body, subject, reply_to=ack_subject(seq))
            for body, subject, seq in [
                (started("a"), TOPO.event_subject("a"), 10),
                (poison, TOPO.event_subject("b"), 11),
                (started("b"), TOPO.event_subject("b"), 12),
            ]
        ]
        await broker.subscribers[0].process_message(msgs)
    assert acks == [(10, "ack"), (11, "term"), (12, "ack")]
    assert EVENTS_UNPROJECTABLE._value.get() == before + 1
    assert (await state(sessions, "a"))[0] == "running"
    assert await state(sessions, "b") == ("running", [(12 * PER_MESSAGE, "started")])
    assert p.consumer.error is None


async def test_a_database_outage_hands_the_batch_back_and_ends_the_run(tmp_path, acks) -> None:
    # A database file in a directory that does not exist: every transaction fails to connect.
    engine = make_engine(DbSettings(url=f"sqlite+aiosqlite:///{tmp_path}/gone/p.db"))
    p = projector(make_sessionmaker(engine))
    try:
        async with TestNatsBroker(p.consumer.build()) as broker:
            await publish(broker, started("a"), TOPO.event_subject("a"), 5)
            # Raised by run() (the api's supervisor restarts the projector, which fetches it again).
            assert p.consumer.error is not None and is_outage(p.consumer.error)
            # A batch fetched before the run ended goes back too, untouched.
            await publish(broker, started("b"), TOPO.event_subject("b"), 6)
    finally:
        await engine.dispose()
    assert acks == [(5, "nak"), (6, "nak")]
