"""Reading a job's log lines from the LOGS stream (the stream is the log store)."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.aio.client import Client as NatsClient

from taskyard_common.nats_util import Stored, read_subject
from taskyard_common.schemas import LogLine
from taskyard_common.topology import Topology

from .schemas import iso

# A follower reads again this long after finding nothing new.
FOLLOW_POLL_S = 0.5
# ...and sends an SSE comment after this long without a line, so proxies keep the stream open.
KEEPALIVE_S = 15.0
FOLLOW_BATCH = 500


def _line(stored: Stored) -> dict:
    line = LogLine.model_validate_json(stored.data)
    return {
        "seq": stored.seq,
        "stream": line.stream,
        "line": line.line,
        "at": iso(line.at),
        "attempt": line.attempt,
    }


async def read_logs(
    nc: NatsClient, topo: Topology, job_id: str, after: int, limit: int, leader: bool = False
) -> list[dict]:
    """Up to `limit` lines of a job after stream sequence `after` (Direct Gets, no consumer; with
    several NATS nodes a follower may answer a few ms behind, unless `leader`)."""
    subject = topo.log_subject(job_id)
    stored = await read_subject(nc, topo.logs_stream, subject, after=after, limit=limit, leader=leader)
    return [_line(s) for s in stored]


async def follow_logs(
    nc: NatsClient,
    topo: Topology,
    job_id: str,
    after: int,
    final_status: Callable[[], Awaitable[str | None]],
) -> AsyncIterator[str]:
    """Server-Sent Events: every line as it is written; `end` once the job is final and drained."""
    quiet_since = time.monotonic()
    while True:
        # Read after the status: an executor stores every line of a job before its final event,
        # so once the job is final, this read (from the stream leader) has the last of them.
        status = await final_status()
        lines = await read_logs(nc, topo, job_id, after, FOLLOW_BATCH, leader=bool(status))
        for line in lines:
            yield f"event: log\ndata: {json.dumps(line)}\n\n"
        if lines:
            after, quiet_since = lines[-1]["seq"], time.monotonic()
            if len(lines) == FOLLOW_BATCH:
                continue
        if status:
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(FOLLOW_POLL_S)
