"""Job files in JetStream's Object Store, streamed both ways: no file is ever whole in memory.

The bucket is a plain nats-py Object Store (same stream layout and meta format, so `nats object`
reads it), but writes and reads go through this module rather than nats-py's `put`/`get`:

- `put` takes an async iterable (an HTTP request body, a file read in a thread), pipelines the
  chunk publishes (a window of acks in flight instead of one round trip per chunk), enforces a
  byte limit and an expected sha256 *before* the meta message is written. The meta message is
  what makes an object visible, so an upload that is refused, interrupted or killed leaves no
  object anyone can see; its chunks are purged (or, after a kill, expire with the bucket's max age).
- `read` pulls chunks in bounded batches from an ephemeral consumer (nats-py's `get` uses a push
  consumer whose client-side buffer can grow to 64 MiB ahead of a slow reader).
"""

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    Header,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError

from .nats_util import AckedPublish
from .settings import ArtifactSettings
from .topology import Topology

# Publishes in flight while uploading: enough to hide the round trip, few enough to stay small
# (window × chunk bytes is the most an upload holds beyond the chunk being filled).
PUT_WINDOW = 16
READ_BATCH = 16
_ROLLUP_SUBJECT = "sub"
# JetStream's error codes for "stream is full" (max_bytes with discard new) and "no storage left".
_STORE_FULL_CODES = frozenset({10047, 10054, 10077})


class ArtifactTooLarge(Exception):
    """Over a byte limit; `limit` is the limit in bytes and `what` names it."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} is over the limit of {limit} bytes ({_human(limit)})")
        self.what, self.limit = what, limit


class DigestMismatch(Exception):
    """The bytes stored (or read) do not have the sha256 they were announced with."""


class StoreFull(Exception):
    """The bucket reached its max_bytes (TASKYARD_ARTIFACTS_BUCKET_MAX_BYTES) or the server its storage."""


@dataclass(frozen=True)
class StoredFile:
    """What the meta message says about one object."""

    name: str
    size: int
    sha256: str  # hex
    chunks: int
    mtime: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _b64(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


class ArtifactStore:
    """One bucket (topology.artifacts_bucket); object names come from Topology.input/output_object."""

    def __init__(
        self, js: JetStreamContext, publish_async: AckedPublish, topo: Topology, settings: ArtifactSettings
    ) -> None:
        self.js, self.publish_async, self.topo, self.settings = js, publish_async, topo, settings
        self.bucket, self.stream = topo.artifacts_bucket, topo.artifacts_stream

    def stream_config(self) -> StreamConfig:
        """The same stream nats-py's create_object_store makes, with Taskyard's limits."""
        return StreamConfig(
            name=self.stream,
            subjects=[f"$O.{self.bucket}.C.>", f"$O.{self.bucket}.M.>"],
            max_age=self.settings.max_age_s,
            max_bytes=self.settings.bucket_max_bytes,
            storage=StorageType.FILE,
            num_replicas=self.topo.settings.replicas,
            discard=DiscardPolicy.NEW,
            allow_rollup_hdrs=True,
            allow_direct=True,
        )

    async def ensure(self) -> None:
        """Create the bucket, or update its limits when the settings changed."""
        try:
            await self.js.add_stream(self.stream_config())
        except BadRequestError:
            await self.js.update_stream(self.stream_config())

    def _meta_subject(self, name: str) -> str:
        return f"$O.{self.bucket}.M.{_b64(name)}"

    def _chunk_subject(self, nuid: str) -> str:
        return f"$O.{self.bucket}.C.{nuid}"

    async def _meta(self, name: str) -> dict | None:
        try:
            msg = await self.js.get_msg(self.stream, subject=self._meta_subject(name), direct=True)
        except NotFoundError:
            return None
        meta = json.loads(msg.data or b"{}")
        return None if meta.get("deleted") else meta

    async def info(self, name: str) -> StoredFile | None:
        """The object's size and sha256, or None when there is none (or it was deleted)."""
        meta = await self._meta(name)
        if meta is None:
            return None
        digest = str(meta.get("digest", "")).split("=", 1)[-1]
        sha = base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex() if digest else ""
        return StoredFile(
            name, int(meta.get("size") or 0), sha, int(meta.get("chunks") or 0), meta.get("mtime")
        )

    async def put(
        self,
        name: str,
        chunks: AsyncIterable[bytes],
        *,
        max_bytes: int,
        what: str = "the file",
        expect_sha256: str | None = None,
    ) -> StoredFile:
        """Store the bytes of `chunks` as `name`; visible only once all are stored and checked.

        Raises ArtifactTooLarge past `max_bytes` (what: how the error names the file),
        DigestMismatch when `expect_sha256` is given and differs, StoreFull when the bucket is
        full. In every failure (and on cancellation) the chunks written so far are purged.
        """
        nuid = self.js._nc._nuid.next().decode()  # the same unique ids nats-py's put uses
        subject = self._chunk_subject(nuid)
        size = self.settings.chunk_bytes
        digest, total, count = hashlib.sha256(), 0, 0
        pending: deque[asyncio.Future] = deque()
        buf = bytearray()
        try:
            async for piece in chunks:
                total += len(piece)
                if total > max_bytes:
                    raise ArtifactTooLarge(what, max_bytes)
                digest.update(piece)
                buf += piece
                while len(buf) >= size:
                    count += 1
                    await self._publish(subject, bytes(buf[:size]), pending)
                    del buf[:size]
            if buf:
                count += 1
                await self._publish(subject, bytes(buf), pending)
            while pending:
                await self._ack(pending.popleft())
            sha = digest.hexdigest()
            if expect_sha256 is not None and sha != expect_sha256:
                raise DigestMismatch(f"the body's sha256 is {sha}, not {expect_sha256}")
            old = await self._meta(name)
            mtime = datetime.now(UTC).isoformat()
            meta = {
                "name": name,
                "bucket": self.bucket,
                "nuid": nuid,
                "size": total,
                "chunks": count,
                "mtime": mtime,
                "digest": "SHA-256=" + base64.urlsafe_b64encode(digest.digest()).decode(),
                "options": {"max_chunk_size": size},
            }
            await self._ack(
                self.js.publish(
                    self._meta_subject(name),
                    json.dumps(meta).encode(),
                    headers={Header.ROLLUP: _ROLLUP_SUBJECT},
                )
            )
        except BaseException:
            await asyncio.shield(self._discard(subject, pending))
            raise
        if old is not None and old.get("nuid") != nuid:
            # The name was taken: its old chunks are garbage now (what nats-py's put does too).
            with contextlib.suppress(NatsError):
                await self.js.purge_stream(self.stream, subject=self._chunk_subject(old["nuid"]))
        return StoredFile(name, total, sha, count, mtime)

    async def _discard(self, subject: str, pending: deque[asyncio.Future]) -> None:
        """Purge a refused upload's chunks once those in flight are stored: a purge can overtake
        a publish still on its way (the stream applies them separately), leaving a chunk behind."""
        if pending:
            _, late = await asyncio.wait(pending, timeout=10)
            for future in late:
                future.cancel()
        with contextlib.suppress(NatsError):
            await self.js.purge_stream(self.stream, subject=subject)

    async def _publish(self, subject: str, data: bytes, pending: deque[asyncio.Future]) -> None:
        pending.append(await self.publish_async(subject, data))
        if len(pending) >= PUT_WINDOW:
            await self._ack(pending.popleft())

    @staticmethod
    async def _ack(future) -> None:  # noqa: ANN001 - a publish's ack future or a publish coroutine
        try:
            await future
        except APIError as exc:
            if exc.err_code in _STORE_FULL_CODES:
                raise StoreFull(f"the artifact store is full ({exc.description})") from None
            raise

    async def put_file(self, name: str, path: Path, *, max_bytes: int, what: str = "the file") -> StoredFile:
        """Store a local file, read in chunks in a worker thread."""
        return await self.put(
            name, read_file(path, self.settings.chunk_bytes), max_bytes=max_bytes, what=what
        )

    async def read(self, stored: StoredFile) -> AsyncIterator[bytes]:
        """The object's chunks in order, at most READ_BATCH chunks held at a time.

        Raises DigestMismatch at the end if the bytes do not match the meta's sha256, NotFoundError
        if the object went away while reading.
        """
        if stored.size == 0:
            return
        meta = await self._meta(stored.name)
        if meta is None:
            raise NotFoundError()
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        sub = await self.js.pull_subscribe(
            self._chunk_subject(meta["nuid"]), stream=self.stream, config=config
        )
        digest, seen = hashlib.sha256(), 0
        try:
            while seen < stored.chunks:
                try:
                    msgs = await sub.fetch(min(READ_BATCH, stored.chunks - seen), timeout=10)
                except TimeoutError:
                    raise NotFoundError() from None  # purged (replaced or expired) while reading
                for msg in msgs:
                    seen += 1
                    digest.update(msg.data)
                    yield msg.data
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        if digest.hexdigest() != stored.sha256:
            raise DigestMismatch(f"{stored.name}: the bytes read do not match the stored sha256")

    async def get_file(self, stored: StoredFile, path: Path) -> None:
        """Write the object to `path` (through a temporary file renamed at the end)."""
        tmp = path.with_name(f".{path.name}.part")
        with open(tmp, "wb") as out:  # noqa: ASYNC230 - writes go through to_thread below
            try:
                async for chunk in self.read(stored):
                    await asyncio.to_thread(out.write, chunk)
            except BaseException:
                out.close()
                tmp.unlink(missing_ok=True)
                raise
        os.replace(tmp, path)

    async def delete(self, name: str) -> bool:
        """Remove the object (meta marked deleted, chunks purged); False when there was none."""
        meta = await self._meta(name)
        if meta is None:
            return False
        gone = {"name": name, "bucket": self.bucket, "nuid": meta["nuid"], "deleted": True, "size": 0}
        await self.js.publish(
            self._meta_subject(name), json.dumps(gone).encode(), headers={Header.ROLLUP: _ROLLUP_SUBJECT}
        )
        await self.js.purge_stream(self.stream, subject=self._chunk_subject(meta["nuid"]))
        return True


async def read_file(path: Path, chunk_bytes: int) -> AsyncIterator[bytes]:
    """A file's bytes in chunks, each read in a worker thread (the loop never blocks on disk)."""
    with open(path, "rb") as src:  # noqa: ASYNC230 - reads go through to_thread below
        while chunk := await asyncio.to_thread(src.read, chunk_bytes):
            yield chunk
