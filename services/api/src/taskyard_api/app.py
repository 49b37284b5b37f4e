"""The FastAPI application: wiring, lifespan, health."""

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import text
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from taskyard_common.artifact_store import ArtifactStore
from taskyard_common.gc_tuning import settle_gc
from taskyard_common.nats_util import AckedPublish, connect
from taskyard_common.settings import ArtifactSettings, DbSettings, NatsSettings
from taskyard_common.supervise import Supervisor
from taskyard_common.telemetry import setup_tracing, shutdown_tracing
from taskyard_common.topology import Topology, ensure_streams
from taskyard_common.tracing_http import FASTAPI_TELEMETRY, TracingMiddleware

from . import (
    api_doc,
    costs,
    errors,
    projector,
    rollups,
    routes_artifacts,
    routes_audit,
    routes_checkpoints,
    routes_console,
    routes_costs,
    routes_jobs,
    routes_keys,
    routes_leases,
    routes_messages,
    routes_notify,
    routes_queues,
    routes_schedules,
    routes_work,
    routes_workers,
)
from .artifacts import ArtifactService
from .audit import prune_audit
from .auth import KeyCache, ensure_key
from .checkpoints import CheckpointService
from .db import make_engine, make_sessionmaker
from .gate_timer import DueJobs, GateTimer
from .http_metrics import REGISTRY, MetricsMiddleware
from .job_types import KnownTypes
from .jobs import JobService
from .key_timer import RateKeys
from .lease_relay import LeaseRelay
from .leases import LeaseService
from .messages import MessageService
from .migrate import is_current
from .notify import Notifier
from .projector import Projector
from .publisher import Publisher
from .queue_state import SAMPLE_INTERVAL_S, QueueState
from .ratelimit import FailureLimiter, TokenBucket
from .reconcile import Reconciler
from .retention import prune_old
from .schedules import ScheduleService
from .settings import ApiSettings
from .views import JsonAnswer
from .workers import WorkerRegistry

log = logging.getLogger("taskyard.api")


async def _connect_nats(settings: NatsSettings):
    while True:
        try:
            return await connect(settings.url, "taskyard-api")
        except Exception as exc:  # noqa: BLE001 - NATS not up yet: keep trying, say so
            log.warning("NATS at %s not reachable (%s); retrying", settings.url, exc)
            await asyncio.sleep(1)


@asynccontextmanager
async def lifespan(app: FastAPI):
    state = app.state
    setup_tracing("taskyard-api")
    nats_settings, db_settings = NatsSettings(), DbSettings()
    if state.settings.environment == "production" and (
        problems := state.settings.production_problems(db_settings.url)
    ):
        raise RuntimeError("refusing to start in production: " + "; ".join(problems))
    state.engine = make_engine(db_settings)
    state.sessions = make_sessionmaker(state.engine)
    state.keys = KeyCache(state.sessions, state.settings.key_cache_s)
    if state.settings.bootstrap_admin_key:
        async with state.sessions() as session:
            if await ensure_key(
                session, "bootstrap-admin", "admin", state.settings.bootstrap_admin_key.get_secret_value()
            ):
                log.info("bootstrap admin key added")
            await session.commit()
    state.topo = Topology(nats_settings)
    state.nc = await _connect_nats(nats_settings)
    state.js = state.nc.jetstream(timeout=10)
    await ensure_streams(state.js, state.topo)
    artifact_settings = ArtifactSettings()
    # One inbox subscription answers the acks of every JetStream publish this process makes.
    acked = AckedPublish(state.nc)
    store = ArtifactStore(state.js, acked, state.topo, artifact_settings)
    await store.ensure()
    state.artifacts = ArtifactService(store, artifact_settings)
    state.queues = QueueState(state.nc, state.js, state.topo, state.settings.queue_state_cache_s)
    publisher = Publisher(state.nc, state.js, state.topo, acked, on_new_queue=state.queues.invalidate)
    state.jobs = JobService(state.sessions, publisher, state.settings, KnownTypes(state.js, state.topo))
    state.projector = Projector(
        state.js,
        state.topo,
        state.sessions,
        state.settings.projector_batch,
        state.jobs.follow,
        ack_wait_s=state.settings.projector_ack_wait_s,
        crash_after_s=state.settings.fault_crash_mid_projection_after_s,
    )
    settings = state.settings
    state.checkpoints = CheckpointService(state.sessions, state.jobs)
    state.messages = MessageService(state.sessions, state.checkpoints, state.settings.message_max_chars)
    state.projector.message_max_chars = state.settings.message_max_chars
    state.schedules = ScheduleService(state.sessions, state.jobs, settings)
    state.workers = WorkerRegistry(
        state.js, state.topo, settings.workers_cache_s, settings.gone_keep_s, settings.stuck_min_s
    )
    state.workers.typical_duration_s = state.projector.typical_duration_s
    secret = settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else None
    state.notifier = Notifier(
        state.sessions,
        secret,
        timeout_s=settings.notify_timeout_s,
        backoff_max_s=settings.notify_backoff_max_s,
        max_tries=settings.notify_max_tries,
    )
    state.projector.notifier = state.notifier
    # REST workers' claims and leases: this process is their executor proxy (leases.py).
    state.leases = LeaseService(
        state.nc, state.js, state.topo, state.sessions, settings.lease_max_result_bytes, acked
    )
    # Calls on leases another api process holds go there; calls on ours come here (lease_relay.py).
    state.lease_relay = LeaseRelay(state.nc, state.topo, state.leases, routes_leases.CALLS)
    await state.lease_relay.start()
    state.supervisor = supervisor = Supervisor("api", REGISTRY)
    # The projector finishes the batch in hand on stop (acked, not redelivered after ack_wait).
    supervisor.start(
        "projector", state.projector.run, stop=state.projector.stop, backoff=projector.RESTART_BACKOFF
    )
    supervisor.start("workers-watch", state.workers.watch)
    supervisor.start("leases", state.leases.run)
    supervisor.every("outbox", settings.outbox_interval_s, state.jobs.reconcile_once)
    # What a machine crash took from JOBS or the database, made up for (at start, then periodically).
    state.reconciler = Reconciler(
        state.nc,
        state.js,
        state.topo,
        state.sessions,
        state.jobs,
        state.workers,
        min_age_s=settings.reconcile_min_age_s,
        batch=settings.reconcile_batch,
        orphan_scan_s=settings.reconcile_orphan_scan_s,
    )
    state.reconciler.projector_caught_up = state.projector.caught_up
    supervisor.every("reconciler", settings.reconcile_interval_s, state.reconciler.run_once, at_start=True)
    state.gate_timer = GateTimer(
        [DueJobs(state.sessions, state.jobs), RateKeys(state.sessions, state.jobs)], state.jobs.gates_changed
    )
    supervisor.start("gate-timer", state.gate_timer.run, stop=state.gate_timer.stop)
    supervisor.every("gate-sweeper", settings.gate_sweep_interval_s, state.jobs.sweep_gates, at_start=True)
    # NATS away shows in /readyz already; a failed sample needs no warning every 2 s.
    supervisor.every(
        "queue-sampler", SAMPLE_INTERVAL_S, state.queues.sample, at_start=True, level=logging.DEBUG
    )
    # One timer for every schedule: it sleeps until the earliest next fire time (or a change).
    supervisor.every(
        "schedules",
        settings.schedule_poll_s,
        state.schedules.run_due,
        wake=state.schedules.wake,
        at_start=True,
    )
    supervisor.every("checkpoint-expiry", settings.checkpoint_expiry_interval_s, state.checkpoints.expire_due)
    supervisor.every("rollup-prune", 3600, lambda: rollups.prune(state.sessions), at_start=True)
    if max_age_s := settings.finished_jobs_max_age_s:  # 0: finished jobs are kept forever
        supervisor.every(
            "retention",
            settings.prune_interval_s,
            lambda: prune_old(state.sessions, max_age_s),
            at_start=True,
        )
    supervisor.every(
        "notify",
        settings.notify_interval_s,
        state.notifier.deliver_due,
        wake=state.notifier.wake,
        settle_s=0.02,
    )
    if audit_age_s := settings.audit_max_age_s:  # 0: audit events are kept forever
        supervisor.every(
            "audit-retention",
            settings.prune_interval_s,
            lambda: prune_audit(state.sessions, audit_age_s),
            at_start=True,
        )
    if cost_age_s := settings.cost_max_age_s:  # 0: costs are kept forever
        supervisor.every(
            "cost-retention",
            settings.prune_interval_s,
            lambda: costs.prune(state.sessions, time.time() - cost_age_s),
            at_start=True,
        )
    settle_gc()  # taskyard_common.gc_tuning
    log.info("api ready: NATS %s, database %s", nats_settings.url, state.engine.url.render_as_string())
    try:
        yield
    finally:
        # The projector ends by itself within a fetch timeout (1 s), acking what it has in hand;
        # the other tasks hold nothing that is lost by cancelling them.
        await supervisor.stop(timeout_s=5)
        # Publishes and acks begun and not waited for (announcements, admitted jobs): they end,
        # or what they leave is due in the outbox.
        if late := await publisher.background.finish(timeout_s=5):
            log.warning("shutdown: %d background publishes cancelled", late)
        await state.lease_relay.stop()
        await state.leases.stop()
        await state.notifier.close()
        try:
            await asyncio.wait_for(state.nc.drain(), 5)
        except TimeoutError:
            log.warning("shutdown: NATS drain timed out; closing")
            await state.nc.close()
        await state.engine.dispose()
        shutdown_tracing()


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    app = FastAPI(
        title="Taskyard API",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JsonAnswer,
        telemetry=FASTAPI_TELEMETRY,
    )
    app.state.settings = settings = settings or ApiSettings()
    app.state.submit_limit = TokenBucket(settings.submit_rate_per_s, settings.submit_burst)
    app.state.auth_failures = FailureLimiter(settings.auth_failures_limit, settings.auth_failures_window_s)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(TracingMiddleware, service="taskyard.api")
    if settings.trusted_proxies:  # added last: outermost, so everything inside sees the real client
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    errors.install(app)
    api_doc.install(app)
    app.include_router(routes_jobs.router)
    app.include_router(routes_console.router)
    app.include_router(routes_keys.router)
    app.include_router(routes_queues.router)
    app.include_router(routes_checkpoints.router)
    app.include_router(routes_messages.router)
    app.include_router(routes_leases.router)
    app.include_router(routes_work.router)
    app.include_router(routes_workers.router)
    app.include_router(routes_audit.router)
    app.include_router(routes_notify.router)
    app.include_router(routes_artifacts.router)
    app.include_router(routes_schedules.router)
    app.include_router(routes_costs.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request):
        state = request.app.state
        checks = {"nats": "ok" if state.nc.is_connected else "disconnected", "db": "ok"}
        checks.update(state.supervisor.checks())  # a background task that died and waits to restart
        try:
            async with asyncio.timeout(3):
                async with state.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                if not await is_current(state.engine):
                    checks["db"] = "not migrated: run `python -m taskyard_api migrate`"
        except Exception as exc:  # noqa: BLE001 - any failure here is the answer
            checks["db"] = f"unreachable: {str(exc).splitlines()[0][:160] or type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "unready", "checks": checks}, 200 if ready else 503
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app
