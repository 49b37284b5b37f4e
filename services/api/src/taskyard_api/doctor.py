"""`taskyard doctor`: is this install healthy? Each check says what is wrong and how to fix it."""

import time

from nats.js.api import AckPolicy
from nats.js.errors import NotFoundError
from sqlalchemy import func, select, text

from taskyard_common.topology import Topology

from .admission import busiest
from .lifecycle import GATED_STATES
from .migrate import is_current
from .models import jobs_table
from .queue_state import QueueState
from .schemas import iso
from .workers import WorkerRegistry

REDELIVERY_ALARM = 10
# A scheduled job this far past its time means no gate timer is opening gates.
OVERDUE_ALARM_S = 5.0


def _check(name: str, ok: bool, detail: str, fix: str = "") -> dict:
    return {"name": name, "ok": ok, "detail": detail, "fix": "" if ok else fix}


async def run_checks(state) -> list[dict]:  # noqa: ANN001 - FastAPI app.state
    topo: Topology = state.topo
    checks = []
    nc = state.nc
    checks.append(
        _check(
            "nats",
            nc.is_connected,
            f"connected to {nc.connected_url.netloc if nc.connected_url else '?'}"
            if nc.is_connected
            else "disconnected",
            "start nats-server or fix TASKYARD_NATS_URL",
        )
    )
    if not nc.is_connected:
        return checks
    for cfg in topo.stream_configs():
        try:
            info = await state.js.stream_info(cfg.name)
        except NotFoundError:
            checks.append(
                _check(f"stream {cfg.name}", False, "missing", "restart the api: it creates the streams")
            )
            continue
        got = info.config
        drift = [
            field
            for field in ("retention", "storage", "subjects", "allow_direct", "max_consumers")
            if getattr(cfg, field) is not None and getattr(got, field) != getattr(cfg, field)
        ]
        checks.append(
            _check(
                f"stream {cfg.name}",
                not drift,
                f"{info.state.messages} messages"
                if not drift
                else f"config differs from the topology: {', '.join(drift)}",
                "restart the api (it updates stream configs) or fix the stream by hand",
            )
        )
    queues: QueueState = state.queues
    snaps = await queues.snapshot()
    for (queue, priority), snap in sorted(snaps.items()):
        info = await state.js.consumer_info(topo.jobs_stream, topo.exec_durable(queue, priority))
        want = topo.exec_consumer(queue, priority)
        problems = []
        if info.config.ack_policy != AckPolicy.EXPLICIT:
            problems.append("ack_policy is not explicit")
        if info.config.max_deliver != want.max_deliver:
            problems.append(f"max_deliver {info.config.max_deliver} != {want.max_deliver}")
        if snap.num_redelivered > REDELIVERY_ALARM:
            problems.append(f"{snap.num_redelivered} jobs redelivered (workers dying or timing out?)")
        checks.append(
            _check(
                f"consumer {queue}/{priority}",
                not problems,
                f"{snap.num_pending} waiting, {snap.num_ack_pending} in flight"
                if not problems
                else "; ".join(problems),
                "check executor logs for crashes and ack_wait vs job duration; recreate the consumer if misconfigured",
            )
        )
    workers: WorkerRegistry = state.workers
    for queue in sorted({q for q, _ in snaps}):
        backlog = sum(s.num_pending + s.num_ack_pending for (q, _), s in snaps.items() if q == queue)
        live = [w for w in await workers.serving(queue) if w.live]
        if backlog:
            checks.append(
                _check(
                    f"workers for {queue}",
                    bool(live),
                    f"{len(live)} live worker(s) for {backlog} job(s)",
                    f"start one: python -m taskyard_executor --queues {queue}",
                )
            )
    try:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        migrated = await is_current(state.engine)
        checks.append(
            _check(
                "database",
                migrated,
                "reachable, migrated" if migrated else "reachable, NOT migrated",
                "run: python -m taskyard_api migrate",
            )
        )
    except Exception as exc:  # noqa: BLE001 - the failure is the finding
        checks.append(
            _check(
                "database",
                False,
                f"unreachable: {str(exc).splitlines()[0][:160]}",
                "check TASKYARD_DB_URL and that the database is up",
            )
        )
    checks += await gate_checks(state.sessions, time.time())
    checks += await _busiest_keys(state)
    lag = await state.js.consumer_info(topo.events_stream, topo.projector_durable)
    checks.append(
        _check(
            "event projection",
            lag.num_pending < 10_000,
            f"{lag.num_pending} events not yet projected",
            "the api is behind on EVENTS: check its log and database latency",
        )
    )
    return checks


async def gate_checks(sessions, now: float) -> list[dict]:  # noqa: ANN001 - async_sessionmaker
    """How many jobs each gate holds; a scheduled job long past its time is a timer not running."""
    j = jobs_table.c
    async with sessions() as session:
        held = dict(
            (await session.execute(
                select(j.status, func.count()).where(j.status.in_(sorted(GATED_STATES))).group_by(j.status)
            )).all()
        )  # fmt: skip
        due = await session.scalar(
            select(func.min(j.run_at)).where(j.status == "scheduled", j.run_at.is_not(None))
        )
    words = ", ".join(f"{held[s]} {s}" for s in sorted(held)) or "no job waits behind a gate"
    late = due is not None and due < now - OVERDUE_ALARM_S
    detail = words + (f"; next scheduled at {iso(due)}" if due is not None else "")
    if late:
        detail = f"a scheduled job is {now - due:.0f}s past its time ({iso(due)}); " + words
    return [
        _check(
            "gates", not late, detail, "the api's gate-timer is not running: check the api log and /readyz"
        )
    ]


async def _busiest_keys(state) -> list[dict]:  # noqa: ANN001 - FastAPI app.state
    """The concurrency keys with the most throttled jobs: information, not a fault (a key exists
    to make jobs wait), so they pass; the line says where the waiting is."""
    try:
        async with state.sessions() as session:
            keys = await busiest(session)
    except Exception:  # noqa: BLE001 - the database check above reports an unreachable database
        return []
    return [
        _check(
            f"key {key}",
            True,
            f"key {key} has {waiting} throttled jobs and limit {limit if limit is not None else '?'}",
        )
        for key, waiting, limit in keys
    ]
