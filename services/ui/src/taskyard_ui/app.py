"""The UI application: routes, the shared HTTP client to the API, and error pages."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from taskyard_common.telemetry import setup_tracing, shutdown_tracing
from taskyard_common.tracing_http import FASTAPI_TELEMETRY, TracingMiddleware, inject_traceparent

from . import (
    routes_approvals,
    routes_auth,
    routes_console,
    routes_control,
    routes_dashboard,
    routes_files,
    routes_jobs,
    routes_logs,
    routes_schedules,
    routes_service,
    routes_submit,
    routes_work,
    routes_workers,
)
from .api import ApiError, ApiUnauthorized, ApiUnavailable
from .settings import UiSettings
from .telemetry import SecurityHeaders, Telemetry
from .web import HERE, NeedLogin, here, login_redirect, render

ERROR_TITLES = {
    403: "Not allowed",
    404: "Not found",
    409: "Not possible in this state",
    413: "Too large",
    422: "Invalid request",
    503: "A Taskyard dependency is down",
}


def create_app(settings: UiSettings | None = None) -> FastAPI:
    """Build the app; one pooled httpx client to the API lives as long as the app."""
    settings = settings or UiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_tracing("taskyard-ui")
        # The hook puts traceparent on every API call, so the API's spans join the UI's trace.
        async with httpx.AsyncClient(
            base_url=settings.api_url,
            timeout=settings.api_timeout_s,
            event_hooks={"request": [inject_traceparent]},
        ) as http:
            app.state.http = http
            yield
        shutdown_tracing()

    app = FastAPI(
        title="Taskyard UI",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=FASTAPI_TELEMETRY,
    )
    app.state.settings = settings
    app.add_middleware(SecurityHeaders)
    app.add_middleware(Telemetry)
    app.add_middleware(TracingMiddleware, service="taskyard.ui")
    if settings.trusted_proxies:  # added last: outermost, so every route sees the browser's address
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.state.who_cache = {}
    for module in (
        routes_service,
        routes_auth,
        routes_dashboard,
        routes_jobs,
        routes_logs,
        routes_submit,
        routes_workers,
        routes_approvals,
        routes_schedules,
        routes_work,
        routes_control,
        routes_console,
        routes_files,
    ):
        app.include_router(module.router)

    @app.exception_handler(NeedLogin)
    async def _need_login(_request: Request, exc: NeedLogin) -> Response:
        return login_redirect(exc.next_url, exc.expired)

    @app.exception_handler(ApiUnauthorized)
    async def _unauthorized(request: Request, _exc: ApiUnauthorized) -> Response:
        return login_redirect(here(request), expired=True)

    @app.exception_handler(ApiUnavailable)
    async def _unavailable(request: Request, exc: ApiUnavailable) -> Response:
        return render(
            request,
            "unavailable.html",
            503,
            api_url=settings.api_url,
            reason=exc.reason,
            retry_url=here(request),
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        title = ERROR_TITLES.get(exc.status, "The API reported an error")
        # The API's own failures (500 and friends) are a bad gateway from the browser's point of view.
        status = exc.status if exc.status < 500 or exc.status == 503 else 502
        return render(request, "error.html", status, title=title, detail=exc.detail)

    return app
