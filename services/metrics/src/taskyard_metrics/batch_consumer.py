"""The metrics service's EVENTS consumer through FastStream's batch pull subscriber (DESIGN.md: the
default for such consumers), on the service's own nats-py connection. The api's projector keeps its
hand-written fetch loop: measured, docs/architecture.md "Consuming EVENTS".

FastStream runs the fetch loop (`PullSub(batch=True)`: it gathers up to `batch` messages for at
most `window_s`, then calls the handler once with the list) and creates the durable consumer. This
module adds what the services need around it and FastStream 0.7.8 does not do (read in its source,
`faststream/nats/subscriber/usecases/stream_pull_subscriber.py`, and checked against nats-server):

- **Failures reach the caller.** FastStream swallows what a handler raises (logs it) and, on a
  fetch error such as 503 "no responders" (the durable consumer was deleted), just fetches again:
  ~7,800 failing fetches a second, 80 % of a core, and the consumer is never re-created. Here the
  first fetch error or handler exception ends `run()` with that exception; the caller (the metrics
  service's loop) runs it again, which re-creates the consumer.
- **A stop finishes what is in hand.** `broker.stop()` alone drops the messages of a fetch window
  still open (FastStream discards a batch once its subscriber stopped running): unacked, they would
  wait ack_wait for the next process. `stop()` here first lets the window in flight end and its
  batch be handled (no new pull is sent once stopping), takes what the server delivered after a
  pull's client side timed out (nats-py keeps it for the next fetch, which never comes), then stops
  the broker.

Settings, for the hot path (every job's events pass here):

- `apply_types=False`: no FastDepends/pydantic model around the handler call.
- `decoder=_raw`: the handler receives the raw `nats.aio.msg.Msg` list; FastStream's batch
  decoder would `json.loads` every body (the services parse with pydantic themselves). What is
  left per message is its batch parser's two list appends.
- `ack_policy=AckPolicy.MANUAL`: no acknowledgement middleware; the handler acks, naks or terms
  each raw message itself after its work is done (`msg.ack()`, like before).
- no middlewares; FastStream's own log lines (one "Received"/"Processed" pair per batch) at DEBUG
  on `<service logger>.faststream`, which is at WARNING unless configured otherwise.
- `graceful_timeout`: `broker.stop()` waits that long for a handler call in progress.
- One connection: the broker runs on the service's nats-py client (`SharedConnectionBroker`), so
  its reconnect policy and callbacks apply, the server sees no extra client, and shutdown's
  `nc.drain()` stays the owner's job (`NatsBroker.stop()` would drain the connection itself).
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import nats.errors
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.message import NatsBatchMessage
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

Handler = Callable[[list[Msg]], Awaitable[None]]

# How long `stop()` waits, beyond the open fetch window, for the batch it brings to be handled.
SETTLE_S = 3.0
# broker.stop() waits this long for a handler call in progress (then FastStream cancels it).
GRACEFUL_S = 5.0
# After a pull that found nothing, the next one waits this long for the first message (one long
# pull instead of a short window's pull every few ms). FastStream's batch loop waits out its whole
# window before handing over a batch that is not full, so a window short enough for a trickle of
# events (5 ms for the projector) made an idle api pull 200 times a second: 8.5 % of a core in the
# api and 6 % in nats-server, against 1 % and 0.7 % with one long pull (docs/performance.md).
IDLE_PULL_S = 1.0


class SharedConnectionBroker(NatsBroker):
    """A NatsBroker on a nats-py client its owner connected and will drain/close."""

    def __init__(self, nc: NatsClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shared = nc

    async def _connect(self) -> NatsClient:
        self.config.connect(self._shared)
        return self._shared

    async def stop(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> None:
        # NatsBroker.stop() drains `_connection`: not ours to drain. Subscribers still stop (and
        # unsubscribe) as usual.
        self._connection = None
        await super().stop(exc_type, exc_val, exc_tb)


async def _raw(msg: NatsBatchMessage, _decoder: Any) -> list[Msg]:
    """The batch as nats-py delivered it: no per-message decoding."""
    return msg.raw_message


class BatchConsumer:
    """One durable pull consumer, its batches handed to `handle` (which acks them), until `stop()`
    or a failure. Build once, `run()` as often as needed (each run is a new broker)."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        stream: str,
        subject: str,
        durable: str,
        config: ConsumerConfig,
        batch: int,
        window_s: float,
        handle: Handler,
        logger: logging.Logger,
    ) -> None:
        self.nc, self.stream, self.subject, self.durable = nc, stream, subject, durable
        self.config, self.batch, self.window_s = config, batch, window_s
        self.handle, self.log = handle, logger
        self.stopping = False
        self._done = asyncio.Event()  # stop() asked, or a failure: no new pull from now on
        self.error: BaseException | None = None
        self._fetching = 0  # pull requests in flight
        self._in_hand = 0  # messages fetched and not yet through `handle`
        self._fetch_raw: Callable[..., Awaitable[list[Msg]]] | None = None  # nats-py's, per run
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._last_pull = 0.0  # loop time the last pull request ended
        self._idle = False  # the last pull found nothing: the next one is a long pull

    def build(self) -> NatsBroker:
        """The broker with its one subscriber (`run()` starts it; tests wrap it in TestNatsBroker)."""
        # FastStream's own lines (per-batch access log, "callback for Task-n is being executed" at
        # every stop) say nothing an operator needs: a child logger at WARNING unless configured.
        fs_log = self.log.getChild("faststream")
        if fs_log.level == logging.NOTSET:
            fs_log.setLevel(logging.WARNING)
        broker = SharedConnectionBroker(
            self.nc,
            apply_types=False,
            graceful_timeout=GRACEFUL_S,
            logger=fs_log,
            log_level=logging.DEBUG,
        )
        broker.subscriber(
            self.subject,
            stream=JStream(self.stream, declare=False),  # ensure_streams owns the stream config
            durable=self.durable,
            config=self.config,
            pull_sub=PullSub(batch_size=self.batch, timeout=self.window_s, batch=True),
            ack_policy=AckPolicy.MANUAL,
            decoder=_raw,
        )(self._on_batch)
        return broker

    def stop(self) -> None:
        """Finish the batch in hand (and the one a pull in flight brings), then end `run()`."""
        self.stopping = True
        self._done.set()

    async def run(self) -> None:
        """Consume until `stop()` (returns) or a failure (raises it). Creates the durable consumer
        with `config` if it does not exist (nats-py's pull_subscribe, called by FastStream)."""
        self._done.clear()
        self.error = None
        self._fetching = self._in_hand = 0
        self._last_pull = 0.0
        if self.stopping:
            return
        broker = self.build()
        try:
            await broker.start()
            subscription = self._subscription = broker.subscribers[0].subscription  # type: ignore[attr-defined]
            # FastStream looks `fetch` up on every call: every pull of this run goes through _fetch.
            self._fetch_raw = subscription.fetch
            subscription.fetch = self._fetch
            await self._done.wait()
            if self.error is None:
                await self._settle()
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await broker.stop()
        if self.error is not None:
            raise self.error

    async def _settle(self) -> None:
        """Wait for the pull in flight to come back, for late deliveries to its request (up to a
        window after it), and for the messages in hand to be handled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s + SETTLE_S
        while loop.time() < deadline and (
            self._fetching or self._in_hand or loop.time() < self._last_pull + self.window_s + 0.05
        ):
            await asyncio.sleep(0.005)
        if self._fetching or self._in_hand:
            self.log.warning("%s: stopping with %d messages not handled", self.durable, self._in_hand)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._done.set()

    async def _fetch(
        self, batch: int = 1, timeout: float | None = 5, heartbeat: float | None = None
    ) -> list[Msg]:
        """FastStream's pull, gated: none once stopping or failed, errors handed to `run()`."""
        if self._done.is_set():
            if self.error is None and (late := self._late()):
                self._in_hand += len(late)
                return late
            # FastStream's loop comes back at once: idle here until run() stops the broker.
            await asyncio.sleep(self.window_s)
            raise nats.errors.TimeoutError
        self._fetching += 1
        assert self._fetch_raw is not None
        if self._idle and timeout is not None:
            # nats-py hands over what arrived as soon as the first message does: an event after an
            # idle spell is handled at once, and FastStream's window, then past, ends with it.
            timeout = max(timeout, IDLE_PULL_S)
        try:
            msgs: list[Msg] = await self._fetch_raw(batch, timeout, heartbeat)
        except TimeoutError as exc:
            self._idle = True
            # nats-py raises its own TimeoutError or the builtin one; FastStream catches only the first.
            raise nats.errors.TimeoutError from exc
        except Exception as exc:
            self._fail(exc)
            raise nats.errors.TimeoutError from exc  # FastStream ends the window; run() ends it all
        finally:
            self._fetching -= 1
            self._last_pull = asyncio.get_running_loop().time()
        self._idle = not msgs
        self._in_hand += len(msgs)
        return msgs

    def _late(self) -> list[Msg]:
        """Messages that reached the subscription after the fetch that asked for them gave up (a
        pull's expiry and the client's timeout end a window together; under load the server's last
        deliveries can come after). nats-py hands them to the next fetch; once stopping there is
        none, so they are taken here (nats-py's own pending queue) instead of being dropped unacked."""
        sub = self._subscription
        queue = getattr(getattr(sub, "_sub", None), "_pending_queue", None)
        late: list[Msg] = []
        while queue is not None and not queue.empty():
            msg = queue.get_nowait()
            sub._sub._pending_size -= len(msg.data)  # type: ignore[union-attr]
            if not JetStreamContext.is_status_msg(msg):
                late.append(msg)
        return late

    async def _on_batch(self, msgs: list[Msg]) -> None:
        try:
            if self.error is not None:
                # Fetched before the failure ended this run: hand it back for the next run.
                for msg in msgs:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.nak(delay=1)
                return
            await self.handle(msgs)
        except Exception as exc:  # noqa: BLE001 - FastStream would only log it: run() raises it
            self._fail(exc)
        finally:
            self._in_hand = max(0, self._in_hand - len(msgs))
