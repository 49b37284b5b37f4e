"""A job attempt's files: a working directory with its inputs staged in, and its outputs stored out.

Outputs are collected after the handler ends, whatever the outcome (a failed run's partial
results are what one needs to debug it). Collection reads only regular files whose real path is
inside the working directory: a glob match that is a symlink leaving it, a device, a FIFO or a
socket is refused and reported, never opened.
"""

import asyncio
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from taskyard_common.artifact_names import BadName, normalise
from taskyard_common.artifact_store import ArtifactStore, ArtifactTooLarge, StoreFull
from taskyard_common.schemas import JobSpec

from .errors import JobError, PermanentError

log = logging.getLogger("taskyard.executor.staging")


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A normalised glob as a regex over relative POSIX paths: `*` and `?` stay within one
    segment, `**` spans any number of segments (`out/**` is every file under out/)."""
    parts = pattern.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append("(?:[^/]+/)*[^/]+" if last else "(?:[^/]+/)*")
            continue
        out.append(_segment(part))
        if not last:
            out.append("/")
    return re.compile("".join(out) + r"\Z")


def _segment(part: str) -> str:
    """One glob segment as a regex that never crosses a `/`."""
    out, i = [], 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := part.find("]", i + 2)) > 0:
            body = part[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def find_outputs(workdir: Path, patterns: list[str]) -> tuple[list[tuple[str, Path]], list[str]]:
    """Files matching `patterns` (globs relative to `workdir`) as (name, real path), and what was
    refused, one message per file. The walk never follows a symlink (so nothing outside the
    working directory is even listed); a matching symlink is used only if it points inside."""
    root = Path(os.path.realpath(workdir))
    matchers = []
    refused: list[str] = []
    for pattern in patterns:
        try:
            matchers.append(glob_regex(normalise(pattern)))
        except BadName as exc:
            refused.append(f"output pattern {pattern!r}: {exc}")
    found: dict[str, Path] = {}
    for top, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        links = [d for d in dirs if os.path.islink(os.path.join(top, d))]
        for entry in sorted(files) + links:
            path = Path(top, entry)
            name = path.relative_to(root).as_posix()
            if not any(m.match(name) for m in matchers):
                continue
            problem = _unsafe(root, path)
            if problem == "directory":
                continue
            if problem:
                refused.append(f"output {name!r}: {problem}")
            else:
                found[name] = Path(os.path.realpath(path))
    return list(found.items()), refused


def _unsafe(root: Path, path: Path) -> str | None:
    """Why `path` may not be read as an output (None: a regular file inside `root`)."""
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        return "refused: it is a symlink that leaves the working directory"
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        return f"refused: cannot stat ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return "directory"
    if not stat.S_ISREG(mode):
        return "refused: not a regular file (device, FIFO or socket)"
    return None


class Outputs:
    """What one attempt stored as outputs, within the per-file and per-job limits."""

    def __init__(self, store: ArtifactStore, job: JobSpec) -> None:
        self.store, self.job = store, job
        self.limits = store.settings
        self.stored: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self._bytes = 0

    async def save(self, name: str, source: Path | bytes) -> dict[str, Any]:
        """Store `source` (a file or bytes) as output `name`; raises PermanentError when refused."""
        try:
            name = normalise(name)
        except BadName as exc:
            raise PermanentError(f"artifact name: {exc}") from None
        if len(self.stored) >= self.limits.max_files_per_job:
            raise PermanentError(
                f"output {name!r}: over the limit of {self.limits.max_files_per_job} files per job"
            )
        left = self.limits.max_job_bytes - self._bytes
        cap = min(self.limits.max_file_bytes, left)
        what = f"output {name!r}" + (
            "" if cap == self.limits.max_file_bytes else " (with the job's other outputs)"
        )
        key = self.store.topo.output_object(self.job.id, name)
        try:
            if isinstance(source, bytes):
                stored = await self.store.put(key, _once(source), max_bytes=cap, what=what)
            else:
                stored = await self.store.put_file(key, source, max_bytes=cap, what=what)
        except (ArtifactTooLarge, StoreFull) as exc:
            raise PermanentError(str(exc)) from None
        self._bytes += stored.size
        item = {"name": name, "size": stored.size, "sha256": stored.sha256}
        self.stored = [i for i in self.stored if i["name"] != name] + [item]
        return item

    async def collect(self, workdir: Path, patterns: list[str]) -> None:
        """Store every file the patterns match; refusals are kept in `refused`, not raised."""
        files, refused = await asyncio.to_thread(find_outputs, workdir, patterns)
        self.refused += refused
        for name, path in files:
            try:
                await self.save(name, path)
            except PermanentError as exc:
                self.refused.append(exc.message)


async def _once(data: bytes):  # noqa: ANN202 - an async iterator of one chunk
    yield data


class Workspace:
    """The working directory of one attempt (removed afterwards) with the job's inputs in it."""

    def __init__(self, store: ArtifactStore, job: JobSpec, attempt: int) -> None:
        self.store, self.job, self.attempt = store, job, attempt
        self.path: Path | None = None
        self.inputs: list[Path] = []

    async def open(self) -> Path:
        root = self.store.settings.work_root
        if root:
            await asyncio.to_thread(os.makedirs, root, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"taskyard-{self.job.id}-{self.attempt}-", dir=root))
        for ref in self.job.inputs:
            self.inputs.append(await self._stage(self.path, ref.path, ref.sha256))
        return self.path

    async def _stage(self, workdir: Path, name: str, sha256: str) -> Path:
        try:
            name = normalise(name)  # the api checked it; an executor trusts no message blindly
        except BadName as exc:
            raise PermanentError(f"input {name!r}: {exc}") from None
        stored = await self.store.info(self.store.topo.input_object(sha256))
        if stored is None:
            raise PermanentError(f"input {name!r}: sha256 {sha256} is no longer in the artifact store")
        dest = workdir / name
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        try:
            await self.store.get_file(stored, dest)
        except OSError as exc:
            raise JobError(f"input {name!r}: cannot write it to the working directory: {exc}") from None
        return dest

    async def close(self) -> None:
        if self.path is not None:
            await asyncio.to_thread(shutil.rmtree, self.path, True)
