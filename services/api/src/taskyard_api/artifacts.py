"""Job files on the API side: check a submit's inputs, take uploads, list and open a job's outputs.

Who may do what (docs/artifacts.md): uploading needs `submitter` (it is part of submitting);
listing and downloading a job's files needs `viewer`, the same as reading its result and logs,
since every key may read every job. Executors read and write the bucket over NATS directly.
"""

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from taskyard_common.artifact_store import (
    ArtifactStore,
    ArtifactTooLarge,
    DigestMismatch,
    StoredFile,
    StoreFull,
)
from taskyard_common.settings import ArtifactSettings

from .failures import Invalid, NotFound, StorageFull, TooLarge
from .lifecycle import JobRecord
from .models import JobEventRow
from .schemas import JobCreate

# Input look-ups in flight while checking a batch (one Direct Get each).
_LOOKUPS = 32


class ArtifactService:
    def __init__(self, store: ArtifactStore, settings: ArtifactSettings) -> None:
        self.store, self.settings = store, settings

    async def check_inputs(self, specs: list[JobCreate], field: str = "") -> None:
        """Every input was uploaded, and each job's inputs are within the per-job limits; the
        stored sizes replace the declared ones. `field` prefixes names in errors (`jobs[3].`)."""
        wanted = {ref.sha256 for spec in specs for ref in spec.inputs}
        if not wanted:
            return
        gate = asyncio.Semaphore(_LOOKUPS)

        async def look(sha: str) -> tuple[str, StoredFile | None]:
            async with gate:
                return sha, await self.store.info(self.store.topo.input_object(sha))

        found = dict(await asyncio.gather(*(look(sha) for sha in wanted)))
        limit, most = self.settings.max_job_bytes, self.settings.max_files_per_job
        for n, spec in enumerate(specs):
            where = f"{field}[{n}]." if field else ""
            if len(spec.inputs) > most:
                raise TooLarge(f"{where}inputs: {len(spec.inputs)} files exceeds the limit of {most} per job")
            total = 0
            for i, ref in enumerate(spec.inputs):
                stored = found[ref.sha256]
                if stored is None:
                    raise Invalid(
                        f"{where}inputs[{i}].sha256: {ref.sha256} was not uploaded (PUT /api/v1/inputs/{{sha256}})"
                    )
                ref.size = stored.size
                total += stored.size
            if total > limit:
                raise TooLarge(f"{where}inputs: {total} bytes exceeds the per-job limit of {limit} bytes")

    async def input_info(self, sha256: str) -> StoredFile:
        stored = await self.store.info(self.store.topo.input_object(sha256))
        if stored is None:
            raise NotFound(f"no input with sha256 {sha256}")
        return stored

    async def upload(
        self, sha256: str, body: AsyncIterable[bytes], length: int | None
    ) -> tuple[StoredFile, bool]:
        """Store an input under its sha256 (checked against the bytes); (file, created)."""
        limit = self.settings.max_file_bytes
        if length is not None and length > limit:
            raise TooLarge(_too_large(ArtifactTooLarge("the upload", limit)))
        name = self.store.topo.input_object(sha256)
        if (stored := await self.store.info(name)) is not None:
            # Stored already (content-addressed): replacing it could cut a job staging it now.
            async for _ in body:
                pass
            return stored, False
        try:
            return await self.store.put(
                name, body, max_bytes=limit, what="the upload", expect_sha256=sha256
            ), True
        except ArtifactTooLarge as exc:
            raise TooLarge(_too_large(exc)) from None
        except DigestMismatch as exc:
            raise Invalid(f"body: {exc} (the path names the sha256 of the body)") from None
        except StoreFull as exc:
            raise StorageFull(
                f"{exc}; raise TASKYARD_ARTIFACTS_BUCKET_MAX_BYTES or wait for old jobs to expire"
            ) from None

    @staticmethod
    def listing(job: JobRecord, timeline: list[JobEventRow]) -> dict[str, Any]:
        """A job's inputs and outputs. Outputs come from its outcome events (the executor names
        what it stored); a later attempt's file of the same name replaces an earlier one."""
        outputs: dict[str, dict[str, Any]] = {}
        for event in timeline:
            for item in (event.data or {}).get("artifacts") or []:
                outputs[item["name"]] = {**item, "attempt": event.attempt}
        base = f"/api/v1/jobs/{job.id}/artifacts/"
        return {
            "job_id": job.id,
            "inputs": (job.artifacts or {}).get("inputs", []),
            "outputs": [{**item, "url": base + name} for name, item in sorted(outputs.items())],
        }

    async def open(
        self, job: JobRecord, timeline: list[JobEventRow], name: str
    ) -> tuple[StoredFile, AsyncIterator[bytes]]:
        """An output of the job and its bytes; NotFound if the job has no such output (any more)."""
        listed = {item["name"] for item in self.listing(job, timeline)["outputs"]}
        if name not in listed:
            raise NotFound(f"job {job.id} has no output named {name!r}")
        stored = await self.store.info(self.store.topo.output_object(job.id, name))
        if stored is None:
            raise NotFound(f"output {name!r} of job {job.id} has expired (TASKYARD_ARTIFACTS_MAX_AGE_S)")
        return stored, self.store.read(stored)


def _too_large(exc: ArtifactTooLarge) -> str:
    return f"{exc} (TASKYARD_ARTIFACTS_MAX_FILE_BYTES); nothing was stored"
