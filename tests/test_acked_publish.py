"""AckedPublish against a real nats-server: what `js.publish_async` answers, for wait_acks."""

import asyncio
import contextlib
import secrets

import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from taskyard_common.nats_util import AckedPublish, wait_acks


@contextlib.asynccontextmanager
async def _stream(url: str):
    """A connection and a stream of its own (`<name>.>`), deleted afterwards."""
    stream = "AP" + secrets.token_hex(3).upper()
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
        yield nc, js, stream
        await js.delete_stream(stream)
    finally:
        await nc.close()


async def test_acks_carry_each_messages_sequence_and_a_dropped_copy_is_a_duplicate(nats_server):
    async with _stream(nats_server.url) as (nc, js, stream):
        publish = AckedPublish(nc)
        subscriptions = len(nc._subs)
        # The first calls come together: they share the one inbox subscription.
        futures = await asyncio.gather(
            *(publish(f"{stream}.a", f"m{i}".encode(), {"Nats-Msg-Id": f"id{i}"}) for i in range(300))
        )
        assert len(nc._subs) == subscriptions + 1
        acks = await wait_acks(list(futures), timeout=10, nc=nc)
        assert [a.seq for a in acks] == list(range(1, 301))  # type: ignore[attr-defined]
        assert {a.stream for a in acks} == {stream}  # type: ignore[attr-defined]
        assert not any(a.duplicate for a in acks)  # type: ignore[attr-defined]

        again = await (await publish(f"{stream}.a", b"m7 again", {"Nats-Msg-Id": "id7"}))
        assert (again.seq, again.duplicate) == (8, True)  # the first copy's sequence, not stored twice
        assert (await js.stream_info(stream)).state.messages == 300
        assert publish._waiting == {}  # every answered future left the table


async def test_no_stream_and_a_refused_message_end_the_future_with_their_error(nats_server):
    async with _stream(nats_server.url) as (nc, js, stream):
        publish = AckedPublish(nc)
        with pytest.raises(NoStreamResponseError):
            await asyncio.wait_for(await publish(f"nostream{stream}.x", b"x"), 5)
        # JetStream refuses it (the stream's last sequence is not 42): nats-py's own handler raised
        # this inside its subscription callback and left the future waiting for its timeout.
        refused = await publish(f"{stream}.a", b"x", {"Nats-Expected-Last-Sequence": "42"})
        with pytest.raises(APIError) as caught:
            await asyncio.wait_for(refused, 5)
        assert caught.value.err_code == 10071  # wrong last sequence
        assert (await js.stream_info(stream)).state.messages == 0


async def test_a_future_given_up_by_its_waiter_leaves_the_table(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        publish = AckedPublish(nc)
        # A core subscriber takes the message (so no "no responders" answer) and never replies.
        sub = await nc.subscribe("ap.silent")
        late = await publish("ap.silent", b"x")
        [outcome] = await wait_acks([late], timeout=0.2, nc=nc)
        assert isinstance(outcome, TimeoutError)
        assert late.cancelled()
        await asyncio.sleep(0)  # done-callbacks run on the loop's next turn
        assert publish._waiting == {}
        await sub.unsubscribe()
    finally:
        await nc.close()
