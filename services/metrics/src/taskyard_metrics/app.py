"""The HTTP side of the metrics service: /healthz, /readyz and /metrics."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from taskyard_common.gc_tuning import settle_gc
from taskyard_common.settings import NatsSettings
from taskyard_common.telemetry import setup_tracing, shutdown_tracing
from taskyard_common.tracing_http import FASTAPI_TELEMETRY, TracingMiddleware

from .service import MetricsService
from .settings import MetricsSettings


def create_app(settings: MetricsSettings | None = None, nats_settings: NatsSettings | None = None) -> FastAPI:
    """Build the app; the service's NATS work starts with the app's lifespan."""
    service = MetricsService(settings or MetricsSettings(), nats_settings or NatsSettings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        setup_tracing("taskyard-metrics")
        service.start()
        settle_gc()  # taskyard_common.gc_tuning
        try:
            yield
        finally:
            await service.stop()
            shutdown_tracing()

    app = FastAPI(
        title="Taskyard metrics",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        telemetry=FASTAPI_TELEMETRY,
    )
    app.state.service = service
    app.add_middleware(TracingMiddleware, service="taskyard.metrics")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process is up and serving."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: 200 when NATS answers and both loops work, else 503 naming what is down."""
        checks = await service.readiness()
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "unready", "checks": checks}, status_code=200 if ready else 503
        )

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus text exposition; sync so rendering runs off the event loop (collectors do no I/O)."""
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
