"""taskyard_metrics.batch_consumer on a real nats-server: what FastStream's batch pull subscriber does
not do by itself. A deleted durable ends run() (FastStream alone would retry the failing fetch
thousands of times a second, for ever); a stop under load leaves nothing delivered and unacked."""

import asyncio
import logging
import uuid

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from taskyard_metrics.batch_consumer import BatchConsumer

log = logging.getLogger("test.batch_consumer")


@pytest.fixture
async def js_stream(nats_server):
    name = f"BC{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    yield nc, js, name
    await js.delete_stream(name)
    await nc.drain()


def consumer(nc, stream: str, handle) -> BatchConsumer:
    return BatchConsumer(
        nc,
        stream=stream,
        subject=f"{stream}.>",
        durable="d",
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=60),
        batch=50,
        window_s=0.005,
        handle=handle,
        logger=log,
    )


async def test_a_deleted_durable_ends_the_run(js_stream) -> None:
    nc, js, stream = js_stream
    got: list[str] = []

    async def handle(msgs) -> None:
        for m in msgs:
            got.append(m.subject)
            await m.ack()

    c = consumer(nc, stream, handle)
    run = asyncio.create_task(c.run())
    await js.publish(f"{stream}.1", b"x")
    async with asyncio.timeout(5):
        while not got:
            await asyncio.sleep(0.01)
    await js.delete_consumer(stream, "d")
    with pytest.raises(nats.errors.Error):
        async with asyncio.timeout(5):
            await run
    # The next run re-creates the durable (deliver all: from the start of the stream) and goes on.
    run = asyncio.create_task(c.run())
    await js.publish(f"{stream}.2", b"x")
    async with asyncio.timeout(5):
        while len(got) < 3:
            await asyncio.sleep(0.01)
    c.stop()
    await asyncio.wait_for(run, 5)
    assert got == [f"{stream}.1", f"{stream}.1", f"{stream}.2"]


async def test_a_stop_under_load_acks_everything_it_was_given(js_stream) -> None:
    nc, js, stream = js_stream
    handled = 0

    async def handle(msgs) -> None:
        nonlocal handled
        await asyncio.sleep(0.002)  # some work per batch
        for m in msgs:
            await m.ack()
        handled += len(msgs)

    c = consumer(nc, stream, handle)
    run = asyncio.create_task(c.run())
    pub = await nats.connect(nc.connected_url.geturl())
    pjs = pub.jetstream()

    async def publish() -> None:
        i = 0
        while True:
            await pjs.publish(f"{stream}.{i % 10}", b"x")
            i += 1

    publisher = asyncio.create_task(publish())
    async with asyncio.timeout(10):
        while handled < 300:
            await asyncio.sleep(0.005)
    c.stop()  # while events keep coming
    await asyncio.wait_for(run, 5)
    publisher.cancel()
    await pub.close()
    info = await js.consumer_info(stream, "d")
    assert info.num_ack_pending == 0, info
    assert info.delivered.stream_seq == handled
