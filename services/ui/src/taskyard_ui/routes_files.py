"""Download links on the job page: a job's outputs streamed from the API with the user's key."""

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from .api import api_headers, detail_of, job_path
from .web import COOKIE, JOB_ID, browser_address

router = APIRouter()
_PASSED = ("content-length", "content-disposition", "x-taskyard-sha256")


@router.get("/jobs/{job_id}/files/{name:path}")
async def download(request: Request, job_id: str, name: str) -> Response:
    """One output of the job; the API decides what this user's role may read (docs/artifacts.md)."""
    key = request.cookies.get(COOKIE)
    if not key:
        return JSONResponse({"detail": "sign in first"}, status_code=401)
    if not JOB_ID.fullmatch(job_id):
        return JSONResponse({"detail": "no such job"}, status_code=404)
    http = request.app.state.http
    req = http.build_request(
        "GET",
        job_path(job_id, "/artifacts/" + quote(name)),
        headers=api_headers(key, browser_address(request)),
    )
    upstream = await http.send(req, stream=True)
    if upstream.status_code != 200:
        await upstream.aread()
        await upstream.aclose()
        return JSONResponse({"detail": detail_of(upstream)}, status_code=upstream.status_code)
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED}
    return StreamingResponse(
        upstream.aiter_raw(),
        media_type="application/octet-stream",
        headers=headers,
        background=BackgroundTask(upstream.aclose),
    )
