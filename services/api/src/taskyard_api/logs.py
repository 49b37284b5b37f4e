"""Reading a job's log lines from the LOGS stream (the stream is the log store)."""

import json
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from taskyard_common.nats_util import stream_seq
from taskyard_common.schemas import LogLine
from taskyard_common.topology import Topology

from .schemas import iso


def _line(msg) -> dict:  # noqa: ANN001
    line = LogLine.model_validate_json(msg.data)
    return {
        "seq": stream_seq(msg),
        "stream": line.stream,
        "line": line.line,
        "at": iso(line.at),
        "attempt": line.attempt,
    }


async def _reader(js: JetStreamContext, topo: Topology, job_id: str, after: int):
    """An ephemeral, server-cleaned pull consumer over one job's log subject."""
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
        opt_start_seq=after + 1 if after else None,
        inactive_threshold=30,
        mem_storage=True,
    )
    return await js.pull_subscribe(topo.log_subject(job_id), stream=topo.logs_stream, config=config)


async def read_logs(js: JetStreamContext, topo: Topology, job_id: str, after: int, limit: int) -> list[dict]:
    sub = await _reader(js, topo, job_id, after)
    try:
        lines: list[dict] = []
        pending = (await sub.consumer_info()).num_pending
        while pending and len(lines) < limit:
            try:
                msgs = await sub.fetch(min(limit - len(lines), 500), timeout=2)
            except (NatsTimeout, TimeoutError):
                break
            lines.extend(_line(m) for m in msgs)
            pending = msgs[-1].metadata.num_pending
        return lines
    finally:
        await sub.unsubscribe()


async def follow_logs(
    js: JetStreamContext,
    topo: Topology,
    job_id: str,
    after: int,
    final_status: Callable[[], Awaitable[str | None]],
) -> AsyncIterator[str]:
    """Server-Sent Events: every line as it is written; `end` once the job is final and drained."""
    sub = await _reader(js, topo, job_id, after)
    try:
        while True:
            try:
                msgs = await sub.fetch(200, timeout=1)
            except (NatsTimeout, TimeoutError):
                msgs = []
            for msg in msgs:
                yield f"event: log\ndata: {json.dumps(_line(msg))}\n\n"
            if msgs and msgs[-1].metadata.num_pending:
                continue
            status = await final_status()
            if status and (await sub.consumer_info()).num_pending == 0:
                yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
                return
            if not msgs:
                yield ": keep-alive\n\n"
    finally:
        await sub.unsubscribe()
