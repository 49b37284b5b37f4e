"""HeartbeatReader: every live worker's heartbeat, from a real workers bucket."""

import asyncio
import secrets

import nats

from taskyard_common.heartbeats import HeartbeatReader
from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology, ensure_streams

from .test_metrics_service import heartbeat


async def test_reads_live_workers_only_and_leaves_no_consumer_behind(nats_server):
    topo = Topology(NatsSettings(prefix="hb" + secrets.token_hex(3)))
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, topo)
        kv = await js.key_value(topo.workers_bucket)
        await kv.put("w-live", heartbeat("w-live"))
        await kv.put("w-exited", heartbeat("w-exited"))
        await kv.delete("w-exited")  # a drained worker's clean exit leaves a delete marker
        await kv.put("junk", b"not a heartbeat")
        reader = HeartbeatReader(js, topo)

        async def keep_beating() -> None:
            while True:
                await kv.put("w-live", heartbeat("w-live"))

        beating = asyncio.create_task(keep_beating())
        try:
            # nats-py's kv.keys() leaves one consumer per call for 5 minutes: the 1,000th call in
            # a row fails with 'maximum consumers limit reached'.
            reads = [await reader.read() for _ in range(1200)]
        finally:
            beating.cancel()
        assert all([hb.id for hb in beats] == ["w-live"] for beats in reads)
        info = await js.stream_info(topo.workers_stream)
        assert info.state.consumer_count == 0
        for stream in [topo.workers_stream] + [cfg.name for cfg in topo.stream_configs()]:
            await js.delete_stream(stream)
    finally:
        await nc.close()
