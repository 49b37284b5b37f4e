"""Connecting to NATS the same way in every service, and small JetStream helpers."""

import asyncio
import json
import logging
import weakref
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

log = logging.getLogger("taskyard.nats")
PING_INTERVAL_S = 5


def server_urls(url: str) -> list[str]:
    """TASKYARD_NATS_URL as nats-py's server list: one URL, or a cluster's nodes comma-separated
    (`nats://a:4222,nats://b:4222`), so the first connect works whichever node is down."""
    return [part.strip() for part in url.split(",") if part.strip()]


# Per client, an event set when it next loses its connection (a fresh one after each loss).
_losses: "weakref.WeakKeyDictionary[NatsClient, asyncio.Event]" = weakref.WeakKeyDictionary()


def next_loss(nc: NatsClient) -> asyncio.Event:
    """An event set when `nc` next loses its server (connect() clients only)."""
    return _losses.setdefault(nc, asyncio.Event())


async def connect(url: str, name: str) -> NatsClient:
    """Connect with unlimited reconnects, so a restarted nats-server (or, in a cluster, another
    node) is picked up again."""

    async def on_disconnect() -> None:
        log.warning("%s: disconnected from NATS", name)
        if (lost := _losses.pop(nc, None)) is not None:
            lost.set()

    async def on_reconnect() -> None:
        log.info("%s: reconnected to NATS", name)

    async def on_error(err: Exception) -> None:
        log.warning("%s: NATS error: %s", name, err)

    nc = await nats.connect(
        server_urls(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        pending_size=64 * 1024 * 1024,
        # A server that hangs (a stopped process, a stalled VM) keeps its socket open: only pings
        # find it. nats-py's default (every 120 s, 2 unanswered) left a client on a stopped cluster
        # node for 4 minutes; now it moves to another node within PING_INTERVAL_S × 3.
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=2,
    )
    return nc


async def wait_acks(
    futures: list[asyncio.Future], timeout: float, nc: NatsClient | None = None
) -> list[object]:
    """Each publish's PubAck (futures of AckedPublish), or the exception it ended with
    (TimeoutError if none came within `timeout`, or before `nc` lost its server when it is given).

    The one deadline here bounds the wait for a whole burst; unanswered futures are cancelled,
    which takes them out of AckedPublish's table. An ack the lost server owed never comes: with
    `nc`, the wait ends at the loss (a caller that may publish again, the api's outbox, then does
    so at once rather than after `timeout`; a stopped cluster node held the api's submits 10 s).
    """
    if futures and nc is None:
        await asyncio.wait(futures, timeout=timeout)
    elif futures and nc is not None:
        # One waiter for all of them (asyncio.wait does not cancel what it waits for), raced
        # against the loss.
        acked = asyncio.ensure_future(asyncio.wait(futures))
        lost = asyncio.ensure_future(next_loss(nc).wait())
        await asyncio.wait([acked, lost], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        acked.cancel()
        lost.cancel()
    for future in futures:
        if not future.done():
            future.cancel()
    return [
        TimeoutError("no publish ack") if f.cancelled() else (f.exception() or f.result()) for f in futures
    ]


class AckedPublish:
    """`js.publish_async` at about 60 % of its client CPU: publish to JetStream and get a future of
    the PubAck (or of NoStreamResponseError / APIError), for `wait_acks`.

    nats-py's version spends ~10 µs a message on what a caller that bounds its own burst does not
    need: a wait on its pending-ack semaphore through `asyncio.wait_for`, a NUID and a random hex
    token per reply subject, a done-callback and PubAck.from_response (24.5 → 14.5 µs a message,
    500-message bursts on a loopback nats-server; the api publishes one JOBS message a job). Its
    handler also raises a JetStream API error out of the subscription callback instead of setting
    it on the future, which then waits for its timeout. One inbox subscription (`<inbox>.*`, sent
    again by nats-py after a reconnect) answers every reply; a future cancelled by its waiter
    (wait_acks' deadline) leaves the table with it."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self._prefix = ""
        self._subscribing = asyncio.Lock()  # callers that come while the inbox is subscribed wait
        self._waiting: dict[str, asyncio.Future] = {}
        self._next = 0

    async def __call__(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future:
        if not self._prefix:
            async with self._subscribing:
                if not self._prefix:
                    prefix = self.nc.new_inbox()
                    await self.nc.subscribe(f"{prefix}.*", cb=self._answer)
                    self._prefix = prefix
        self._next += 1
        token = str(self._next)
        future = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            await self.nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers=headers)
        except BaseException:
            del self._waiting[token]
            raise
        future.add_done_callback(lambda _: self._waiting.pop(token, None))
        return future

    async def _answer(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) + 1 :], None)
        if future is None or future.done():
            return
        status = msg.headers.get("Status") if msg.headers else None
        if status == "503":  # no stream takes the subject (yet)
            future.set_exception(NoStreamResponseError())
            return
        try:
            answer = json.loads(msg.data)
        except ValueError:
            future.set_exception(
                nats.errors.Error(f"publish answered {status or 'no status'}: {msg.data[:200]!r}")
            )
            return
        if "error" in answer:
            try:
                APIError.from_error(answer["error"])  # raises the error's own class
            except APIError as exc:
                future.set_exception(exc)
            return
        future.set_result(
            PubAck(stream=answer["stream"], seq=answer["seq"], duplicate=answer.get("duplicate"))
        )


def _ack_fields(msg: Msg) -> list[str]:
    """A delivered JetStream message's ack subject from the stream on: `<stream>.<consumer>.
    <delivered>.<sseq>...`. Layouts: `$JS.ACK.<stream>...` (9 tokens) and the newer
    `$JS.ACK.<domain>.<account>.<stream>...`.
    """
    tokens = msg.reply.split(".")
    return tokens[2:] if len(tokens) == 9 else tokens[4:]


def stream_seq(msg: Msg) -> int:
    """A delivered JetStream message's stream sequence, read straight off its ack subject.

    `msg.metadata` parses every field into dataclasses and a datetime: 7 % of the api's CPU while
    projecting events.
    """
    return int(_ack_fields(msg)[3])


def delivered_count(msg: Msg) -> int:
    """How many times a delivered JetStream message has been delivered (1 the first time), read off
    its ack subject as `stream_seq` is (`msg.metadata` was 6 % of an executor's CPU)."""
    return int(_ack_fields(msg)[2])


def consumer_of(msg: Msg) -> str:
    """The consumer a delivered JetStream message came from, read off its ack subject."""
    return _ack_fields(msg)[1]


# Messages per Direct Get request in read_subject.
DIRECT_BATCH = 256


@dataclass(frozen=True)
class Stored:
    """A message read straight from a stream: its sequence and body."""

    seq: int
    data: bytes


async def read_subject(
    nc: NatsClient,
    stream: str,
    subject: str,
    after: int = 0,
    limit: int | None = None,
    timeout: float = 5.0,
    leader: bool = False,
) -> list[Stored]:
    """The messages on `subject` with a stream sequence above `after`, oldest first, at most
    `limit`: batched Direct Gets (the stream needs `allow_direct`), one request per 256.

    No consumer is created. An ephemeral consumer per read stays on the server for its inactive
    threshold: a burst of retries (each replays its job's events) or log reads reached JetStream's
    consumer limit, and every read after that failed.

    Any replica answers a Direct Get, and a follower may not have stored the newest messages yet
    (what it has is a prefix of the stream). `leader=True` then asks the stream leader for what
    follows, one request per message (usually one request that finds nothing): for reads that must
    see everything already acked (a job's journal, the last lines of a finished job's log).
    """
    out = await _read_direct(nc, stream, subject, after, limit, timeout)
    if leader and (limit is None or len(out) < limit):
        rest = None if limit is None else limit - len(out)
        js = nc.jetstream(timeout=timeout)
        out += await _read_from_leader(js, stream, subject, out[-1].seq if out else after, rest)
    return out


async def _read_direct(
    nc: NatsClient, stream: str, subject: str, after: int, limit: int | None, timeout: float
) -> list[Stored]:
    out: list[Stored] = []
    replies: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=replies.put)
    try:
        while limit is None or len(out) < limit:
            batch = DIRECT_BATCH if limit is None else min(DIRECT_BATCH, limit - len(out))
            body = json.dumps({"seq": after + 1, "next_by_subj": subject, "batch": batch}).encode()
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", body, reply=inbox)
            while True:
                try:
                    msg = await asyncio.wait_for(replies.get(), timeout)
                except TimeoutError:
                    raise nats.errors.TimeoutError from None
                headers = msg.headers or {}
                status = headers.get("Status")
                if not status:
                    after = int(headers["Nats-Sequence"])
                    out.append(Stored(after, msg.data))
                    continue
                if status == "404":  # nothing (more) on the subject
                    return out
                if status != "204":
                    raise nats.errors.Error(
                        f"direct get from {stream}: {status} {headers.get('Description', '')}"
                    )
                if headers.get("Nats-Num-Pending", "0") == "0":  # 204: end of this batch
                    return out
                break
    finally:
        await sub.unsubscribe()
    return out


async def _read_from_leader(
    js: JetStreamContext, stream: str, subject: str, after: int, limit: int | None
) -> list[Stored]:
    out: list[Stored] = []
    while limit is None or len(out) < limit:
        try:
            msg = await js.get_msg(stream, seq=after + 1, subject=subject, next=True)
        except NotFoundError:  # nothing (more) on the subject
            break
        assert msg.seq is not None  # a stored message always has one; nats-py's field is Optional
        after = msg.seq
        out.append(Stored(after, msg.data or b""))
    return out
