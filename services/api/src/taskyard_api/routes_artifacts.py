"""/api/v1/inputs (upload a job's input file), /api/v1/jobs/{id}/artifacts (list, download) and
/api/v1/batches/{id}/artifacts (every member's listing, for `taskyard batch download`).

Bodies stream both ways: an upload goes to the Object Store chunk by chunk as it arrives, a
download leaves it the same way, so the api holds a few chunks per transfer, never a file.
"""

from urllib.parse import quote

from fastapi import APIRouter, Path, Request
from fastapi.responses import StreamingResponse

from . import batches
from .api_doc import answers
from .auth import Principal, require
from .input_checks import CheckedRoute
from .routes_jobs import _load, job_service
from .routes_work import _batch
from .views import JsonAnswer

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)
SHA256 = Path(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file, 64 lower-case hex digits")
_UPLOAD_BODY = {
    "requestBody": {
        # No body is an empty file (a legitimate input), so the body is not required.
        "required": False,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _file_out(stored) -> dict:  # noqa: ANN001 - a StoredFile
    return {"sha256": stored.sha256, "size": stored.size, "stored_at": stored.mtime}


@router.get("/inputs/{sha256}", responses=answers(404))
async def input_info(request: Request, sha256: str = SHA256, who: Principal = require("submitter")):
    """Whether an input is stored already (clients skip the upload when it is)."""
    job_service(request)
    return JsonAnswer(_file_out(await request.app.state.artifacts.input_info(sha256)))


@router.put(
    "/inputs/{sha256}",
    status_code=201,
    openapi_extra=_UPLOAD_BODY,
    responses={200: {"description": "Stored before (same sha256): nothing new stored"}, **answers(413, 507)},
)
async def upload_input(request: Request, sha256: str = SHA256, who: Principal = require("submitter")):
    """Store a job input, streamed; the path's sha256 must be the body's (422 otherwise).

    Over TASKYARD_ARTIFACTS_MAX_FILE_BYTES (Content-Length, or counted as it arrives) it is a
    413 naming the limit, and nothing is stored.
    """
    length = request.headers.get("content-length")
    declared = int(length) if length and length.isdigit() else None
    job_service(request)
    stored, created = await request.app.state.artifacts.upload(sha256, request.stream(), declared)
    return JsonAnswer(_file_out(stored), 201 if created else 200)


@router.get("/jobs/{job_id}/artifacts", responses=answers(404))
async def list_artifacts(job_id: str, request: Request, who: Principal = require("viewer")):
    """The job's input files and the outputs its attempts stored (name, size, sha256, url)."""
    job, timeline = await _load(request, job_id)
    return JsonAnswer(request.app.state.artifacts.listing(job, timeline))


@router.get(
    "/jobs/{job_id}/artifacts/{name:path}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **answers(404)},
)
async def download_artifact(job_id: str, name: str, request: Request, who: Principal = require("viewer")):
    """One output, streamed, with its size (Content-Length) and sha256 (X-Taskyard-Sha256).
    Only names in the job's listing are served (they are normalised): any other is a 404."""
    job, timeline = await _load(request, job_id)
    job_service(request)
    stored, chunks = await request.app.state.artifacts.open(job, timeline, name)
    filename = quote(name.rsplit("/", 1)[-1])
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(stored.size),
            "X-Taskyard-Sha256": stored.sha256,
            "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
        },
    )


@router.get("/batches/{batch_id}/artifacts", responses=answers(404))
async def list_batch_artifacts(batch_id: str, request: Request, who: Principal = require("viewer")):
    """Each member's inputs and outputs, as GET /api/v1/jobs/{id}/artifacts answers them, with its
    status: {"batch_id", "members": [{"job_id", "status", "inputs", "outputs"}]} in job id order.
    The files themselves download one by one from each member's `url`s (streamed)."""
    batch = await _batch(request, batch_id)
    async with request.app.state.sessions() as session:
        members = await batches.member_timelines(session, batch.id)
    listing = request.app.state.artifacts.listing
    return JsonAnswer(
        {
            "batch_id": batch.id,
            "members": [{**listing(job, timeline), "status": job.status} for job, timeline in members],
        }
    )
