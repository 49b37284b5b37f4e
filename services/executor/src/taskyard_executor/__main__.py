"""`python -m taskyard_executor [--queues a,b] [--slots N] [-A myapp.jobs ...]`."""

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator

import uvicorn
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskyard_common import event_loop
from taskyard_common.gc_tuning import settle_gc
from taskyard_common.logging_setup import setup_logging, uvicorn_log_config
from taskyard_common.nats_util import connect
from taskyard_common.settings import NatsSettings
from taskyard_common.supervise import Supervisor
from taskyard_common.telemetry import setup_tracing, shutdown_tracing
from taskyard_common.topology import QueueLimitReached, Topology, ensure_streams

from .heartbeat import HeartbeatPublisher
from .registry import registry
from .settings import ExecutorSettings
from .worker import Worker

log = logging.getLogger("taskyard.executor")


class _Server(uvicorn.Server):
    """uvicorn without its own SIGTERM/SIGINT handlers: the worker owns those (drain)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def health_app(worker: Worker) -> Starlette:
    """/healthz, /readyz, /metrics; `app.state.supervisor` runs the worker's background tasks and
    counts their restarts on this app's registry. Plain Starlette: three GET routes need none of
    FastAPI, whose import was ~0.16 s of CPU of each executor's ~0.5 s start-up."""
    metrics = CollectorRegistry()
    ProcessCollector(registry=metrics)
    supervisor = Supervisor("executor", metrics)
    Gauge("taskyard_executor_slots", "Configured slots", registry=metrics).set_function(
        lambda: worker.settings.slots
    )
    Gauge(
        "taskyard_executor_slots_used", "Slots in use: jobs whose handler runs", registry=metrics
    ).set_function(lambda: len(worker.running))
    # Handlers returned, outcomes being stored and acked: these hold no slot (docs/architecture.md).
    Gauge(
        "taskyard_executor_finishing", "Jobs whose outcome is being reported", registry=metrics
    ).set_function(lambda: len(worker.finishing))
    Gauge("taskyard_executor_jobs_done", "Jobs finished successfully", registry=metrics).set_function(
        lambda: worker.done
    )
    # How many `started` events rode in their job's outcome (one EVENTS message) or went alone.
    Gauge(
        "taskyard_executor_starts_coalesced", "`started` events carried in their outcome", registry=metrics
    ).set_function(lambda: worker.starts_coalesced)
    Gauge(
        "taskyard_executor_starts_alone", "`started` events published on their own", registry=metrics
    ).set_function(lambda: worker.starts_alone)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "worker_id": worker.id})

    async def readyz(request: Request) -> JSONResponse:
        tasks = supervisor.checks()
        ok = worker.nc.is_connected and not worker.draining and all(v == "ok" for v in tasks.values())
        body = {
            "status": "ready" if ok else "unready",
            "nats": "ok" if worker.nc.is_connected else "disconnected",
            "checks": tasks,
        }
        return JSONResponse(body, 200 if ok else 503)

    async def prom(request: Request) -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prom, methods=["GET"]),
        ]
    )
    app.state.supervisor = supervisor
    return app


# A JetStream cluster that is starting (or electing leaders) answers stream and consumer requests
# late or with 503 for a few seconds: an executor started beside the api on a fresh 3-node
# cluster exited with "nats: timeout" while the api was creating the streams. Up to this long,
# start-up is tried again.
SETUP_RETRY_S = 60.0


async def _set_up(nc: NatsClient, topo: Topology, worker: Worker) -> None:
    """Streams, this executor's queues' consumers and its subscriptions, tried again while
    JetStream is not answering (QueueLimitReached is no such case: it is raised at once)."""
    deadline = time.monotonic() + SETUP_RETRY_S
    while True:
        try:
            await ensure_streams(nc.jetstream(), topo)
            await worker.start()
            return
        except (NatsError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("JetStream not answering at start-up (%s); trying again", exc)
            await asyncio.sleep(1)


async def serve(settings: ExecutorSettings) -> None:
    setup_tracing("taskyard-executor")
    nats_settings = NatsSettings()
    topo = Topology(nats_settings)
    for path in settings.handlers:
        registry.load(path)
    worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
    nc = await connect(nats_settings.url, f"taskyard-executor-{worker_id}")
    worker = Worker(nc, topo, settings, registry, worker_id)
    await _set_up(nc, topo, worker)
    beats = HeartbeatPublisher(worker, topo)
    await beats.beat()

    app = health_app(worker)
    supervisor: Supervisor = app.state.supervisor
    server = _Server(
        uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level="warning", log_config=uvicorn_log_config()
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    supervisor.start("pull", worker.pull_forever)  # returns once the worker drains
    # Publishes the `started` of jobs still running when their coalescing window passes.
    supervisor.start("starts", worker.release_starts)
    # Extends the ack wait of jobs whose handler runs longer than a third of it.
    supervisor.start("keepalive", worker.keep_alive_forever)
    # A beat every interval, and soon after the worker's state changes (a job started or ended, a
    # drain began): the changes of one coalescing window go out as one KV put, so what the API
    # shows as busy trails the worker by about that window, not up to a whole interval.
    supervisor.every(
        "heartbeat",
        nats_settings.heartbeat_interval_s,
        beats.beat,
        wake=worker.state_changed,
        settle_s=settings.heartbeat_coalesce_s,
    )
    serving = asyncio.create_task(server.serve())
    settle_gc()  # taskyard_common.gc_tuning
    log.info(
        "executor %s ready: queues=%s slots=%d handlers=%s",
        worker_id,
        ",".join(settings.queues),
        settings.slots,
        ",".join(registry.names()),
    )
    # A signal, or a drain/stop sent over NATS (`taskyard workers drain|stop`): either way the
    # worker drains, removes its heartbeat and exits.
    asked = asyncio.create_task(worker.exit_requested.wait())
    signalled = asyncio.create_task(stop.wait())
    await asyncio.wait({asked, signalled}, return_when=asyncio.FIRST_COMPLETED)
    asked.cancel()
    signalled.cancel()
    grace = worker.exit_grace_s if worker.exit_requested.is_set() else settings.drain_grace_s
    log.info("executor %s draining (grace %.0fs)", worker_id, grace)
    await worker.drain(grace)
    # Stopped before the last beat and the removal, so no periodic beat puts the key back.
    await supervisor.stop()
    await beats.beat()
    await beats.remove()
    server.should_exit = True  # uvicorn stops on its own; cancelling it printed a traceback
    await serving
    await nc.drain()
    shutdown_tracing()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskyard_executor")
    parser.add_argument("--queues", help="comma-separated queues to serve (default: default)")
    parser.add_argument("--slots", type=int, help="concurrent jobs")
    parser.add_argument("-A", "--handlers", action="append", help="import path of a module with handlers")
    parser.add_argument("--port", type=int, help="health/metrics port")
    args = parser.parse_args(argv)
    overrides = {}
    if args.queues:
        overrides["queues"] = args.queues
    if args.slots:
        overrides["slots"] = args.slots
    if args.handlers:
        overrides["handlers"] = args.handlers
    if args.port:
        overrides["port"] = args.port
    settings = ExecutorSettings(**overrides)
    setup_logging("taskyard-executor")
    try:
        event_loop.run(serve(settings))
    except QueueLimitReached as exc:
        print(f"taskyard-executor: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
