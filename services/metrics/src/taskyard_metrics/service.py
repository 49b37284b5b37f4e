"""The background side of the metrics service: connect, set up JetStream, consume and poll."""

import asyncio
import contextlib
import logging

import nats.errors

from taskyard_common.nats_util import connect
from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology, ensure_streams

from .events import run_consumer
from .poller import SnapshotCollector, run_poller
from .registry import Metrics
from .settings import MetricsSettings
from .state import ServiceState

log = logging.getLogger("taskyard.metrics")

# A readiness probe must answer quickly even when NATS does not.
READY_PING_TIMEOUT_S = 1.0
LOOP_RESTART_S = 5.0


class MetricsService:
    """Owns the NATS connection and the two loops; the HTTP app only reads from it."""

    def __init__(self, settings: MetricsSettings, nats_settings: NatsSettings) -> None:
        self.settings = settings
        self.topo = Topology(nats_settings)
        self.metrics = Metrics()
        self.collector = SnapshotCollector()
        self.metrics.registry.register(self.collector)
        self.state = ServiceState()
        self.metrics.nats_connected.set_function(
            lambda: 1.0 if self.state.nc is not None and self.state.nc.is_connected else 0.0
        )
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start in the background so /healthz answers even while NATS is unreachable."""
        self._task = asyncio.create_task(self._run(), name="taskyard-metrics")
        self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            # A bug, not an outage (NATS errors are handled in the loops): stay up but unready.
            log.error("metrics service stopped", exc_info=err)
            self.state.setup = f"stopped: {err!r}"

    async def _run(self) -> None:
        # taskyard_common's connect retries forever, so this waits for NATS to come up.
        nc = await connect(self.topo.settings.url, "taskyard-metrics")
        self.state.nc = nc
        self.state.setup = "setting up JetStream streams"
        js = nc.jetstream()
        while True:
            try:
                await ensure_streams(js, self.topo)
                break
            except (nats.errors.Error, TimeoutError) as err:
                self.state.setup = f"cannot set up JetStream streams: {err!r}"
                log.warning("%s; retrying", self.state.setup)
                await asyncio.sleep(1.0)
        self.state.setup = "ok"
        log.info("JetStream ready; consuming %s as %s", self.topo.events_stream, self.topo.metrics_durable)
        while True:
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(run_consumer(js, self.topo, self.metrics, self.settings, self.state))
                    tg.create_task(
                        run_poller(
                            js,
                            self.topo,
                            self.metrics,
                            self.collector,
                            self.settings.poll_interval_s,
                            self.state,
                        )
                    )
            except Exception as err:
                # NATS outages are handled inside the loops; this is a bug or something unforeseen.
                # Log it loudly, show it in /readyz, and start the loops again rather than sit dead.
                log.exception("metrics loops failed; restarting them in %.0f s", LOOP_RESTART_S)
                self.state.setup = f"loops failed, restarting: {err!r}"
                await asyncio.sleep(LOOP_RESTART_S)
                self.state.setup = "ok"

    async def stop(self) -> None:
        """Cancel the loops and close the connection (lifespan shutdown)."""
        if self._task is not None:
            self._task.cancel()
            # Our own cancellation, requested just above: nothing to report.
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.state.nc is not None and not self.state.nc.is_closed:
            await self.state.nc.close()

    async def readiness(self) -> dict[str, str]:
        """One entry per dependency check, "ok" or what is wrong."""
        nc = self.state.nc
        if nc is None:
            nats_check = self.state.setup
        elif not nc.is_connected:
            nats_check = "disconnected from NATS (reconnecting)"
        else:
            try:
                # nats-py annotates `timeout` as int; it is used as seconds, fractions work.
                await nc.flush(timeout=READY_PING_TIMEOUT_S)  # type: ignore[arg-type]
                nats_check = "ok"
            except (nats.errors.Error, TimeoutError) as err:
                nats_check = f"NATS does not answer: {err!r}"
        return {
            "nats": nats_check,
            "jetstream": self.state.setup if nc is not None else "waiting for NATS",
            "events_consumer": self.state.consumer,
            "state_poll": self.state.poll,
        }
