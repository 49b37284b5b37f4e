"""The executor's two per-job waits, bounded by a timer each: a handler's `timeout_s`
(worker._within) and a job's flush of its events (logsink.Emitter, FLUSH_TIMEOUT_S)."""

import asyncio

import pytest
from nats.js.errors import NoStreamResponseError

from taskyard_common.schemas import JobEvent
from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology
from taskyard_executor import logsink
from taskyard_executor.errors import JobError
from taskyard_executor.logsink import Emitter
from taskyard_executor.worker import _within


async def test_a_handler_within_its_timeout_gives_its_result():
    async def quick() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await _within(asyncio.create_task(quick()), 5) == "done"


async def test_a_handler_past_its_timeout_is_cancelled_and_fails_as_timed_out():
    handler = asyncio.create_task(asyncio.sleep(5))
    with pytest.raises(JobError, match=r"timed out after 0\.05s"):
        await _within(handler, 0.05)
    assert handler.cancelled()


async def test_a_cancelled_handler_is_a_cancel_not_a_timeout():
    handler = asyncio.create_task(asyncio.sleep(5))
    asyncio.get_running_loop().call_later(0.01, handler.cancel)  # a person's cancel, or a drain
    with pytest.raises(asyncio.CancelledError):
        await _within(handler, 5)


async def test_the_waiting_task_cancelled_is_a_cancel_even_past_the_timeout():
    handler = asyncio.create_task(asyncio.sleep(5))
    waiter = asyncio.create_task(_within(handler, 0.02))
    await asyncio.sleep(0)
    waiter.cancel()  # the process stops
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert handler.cancelled()


class SilentJetStream:
    """publish_async whose acks come only when the test says so."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future] = []

    async def publish_async(self, subject: str, data: bytes) -> asyncio.Future:
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]


def emitter() -> tuple[Emitter, SilentJetStream]:
    js = SilentJetStream()
    topo = Topology(NatsSettings(url="nats://127.0.0.1:1", prefix="t"))
    return Emitter(js.publish_async, topo, batch_subject="t.batch.x"), js


async def test_a_flush_whose_ack_never_comes_fails_after_the_flush_timeout(monkeypatch):
    monkeypatch.setattr(logsink, "FLUSH_TIMEOUT_S", 0.05)
    sink, _ = emitter()
    await sink.event(JobEvent(job_id="A", type="succeeded"))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sink.flush("A"), 2)


async def test_one_jobs_flush_cancelled_leaves_the_others_wait_on_the_shared_batch():
    sink, js = emitter()
    await sink.event(JobEvent(job_id="A", type="succeeded"))
    await sink.event(JobEvent(job_id="B", type="succeeded"))
    a = asyncio.create_task(sink.flush("A"))
    b = asyncio.create_task(sink.flush("B"))
    await asyncio.sleep(0.01)
    assert len(js.acks) == 1  # both events went in one batch message
    a.cancel()
    await asyncio.sleep(0)
    js.acks[0].set_result("stored")
    await asyncio.wait_for(b, 2)  # B's flush returns: the batch's ack reached it
    with pytest.raises(asyncio.CancelledError):
        await a


async def test_close_waits_for_a_resend_under_way(monkeypatch):
    """A publish answered 503 (no stream leader) is sent again in the background; at stop, close()
    waits for that resend even when no job's flush waits for it any more."""
    monkeypatch.setattr(logsink, "RETRY_PAUSE_S", 0.01)
    sink, js = emitter()
    await sink.event(JobEvent(job_id="A", type="started"), own_subject=True)
    sink.forget("A")  # its job ended without a flush: only the resend still holds its event
    js.acks[0].set_exception(NoStreamResponseError())

    async def store_the_resend() -> None:
        while len(js.acks) < 2:
            await asyncio.sleep(0.005)
        js.acks[1].set_result("stored")

    storing = asyncio.create_task(store_the_resend())
    await asyncio.wait_for(sink.close(), 2)
    assert len(js.acks) == 2 and js.acks[1].done(), "close() returned before the resend was stored"
    await storing
