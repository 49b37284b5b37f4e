"""Service routes without auth: /healthz, /readyz (is the API answering?) and /metrics."""

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .telemetry import REGISTRY

router = APIRouter()

READY_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when the API answers its /healthz, else 503 naming the problem."""
    try:
        resp = await request.app.state.http.get("/healthz", timeout=READY_TIMEOUT_S)
        api = "ok" if resp.status_code == 200 else f"API /healthz answered {resp.status_code}"
    except httpx.TransportError as err:
        api = f"API unreachable at {request.app.state.settings.api_url}: {type(err).__name__}"
    ready = api == "ok"
    return JSONResponse(
        {"status": "ready" if ready else "unready", "checks": {"api": api}}, status_code=200 if ready else 503
    )


@router.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition of the UI's own metrics."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
