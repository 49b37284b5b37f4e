"""read_subject: a subject's messages straight from a real stream, without a consumer."""

import secrets

import nats
from nats.js.api import StreamConfig

from taskyard_common.nats_util import _read_from_leader, read_subject


async def test_reads_one_subject_in_order_in_pages_and_leaves_no_consumer(nats_server):
    stream = "RS" + secrets.token_hex(3).upper()
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"], allow_direct=True))
        for i in range(600):  # more than two Direct Get batches, interleaved with another subject
            await js.publish(f"{stream}.a", f"a{i}".encode())
            if i % 3 == 0:
                await js.publish(f"{stream}.b", f"b{i}".encode())
        every = await read_subject(nc, stream, f"{stream}.a")
        assert [m.data for m in every] == [f"a{i}".encode() for i in range(600)]
        seqs = [m.seq for m in every]
        assert seqs == sorted(seqs) and len(set(seqs)) == 600

        page = await read_subject(nc, stream, f"{stream}.a", after=seqs[99], limit=300)
        assert [m.seq for m in page] == seqs[100:400]
        assert await read_subject(nc, stream, f"{stream}.a", after=seqs[-1]) == []
        assert await read_subject(nc, stream, f"{stream}.none") == []
        assert len(await read_subject(nc, stream, f"{stream}.b")) == 200

        # The leader's answer is the same messages; leader=True adds only what the replica lacked.
        assert await read_subject(nc, stream, f"{stream}.a", leader=True) == every
        assert await _read_from_leader(js, stream, f"{stream}.a", seqs[589], None) == every[590:]
        assert await _read_from_leader(js, stream, f"{stream}.a", 0, 5) == every[:5]

        assert (await js.stream_info(stream)).state.consumer_count == 0
        await js.delete_stream(stream)
    finally:
        await nc.close()
