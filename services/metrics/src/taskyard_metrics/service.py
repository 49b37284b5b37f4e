"""The background side of the metrics service: connect, set up JetStream, consume and poll."""

import logging

import nats.errors

from taskyard_common.nats_util import connect
from taskyard_common.settings import NatsSettings
from taskyard_common.supervise import Supervisor
from taskyard_common.topology import Topology, ensure_streams

from .costs import parse_budgets, parse_labels
from .events import events_consumer, run_consumer
from .poller import SnapshotCollector, run_poller
from .registry import Metrics
from .settings import MetricsSettings, parse_wait_targets
from .state import ServiceState

log = logging.getLogger("taskyard.metrics")

# A readiness probe must answer quickly even when NATS does not.
READY_PING_TIMEOUT_S = 1.0


class MetricsService:
    """Owns the NATS connection and the two loops (run by a Supervisor); the HTTP app only reads."""

    def __init__(self, settings: MetricsSettings, nats_settings: NatsSettings) -> None:
        self.settings = settings
        self.topo = Topology(nats_settings)
        self.metrics = Metrics(
            wait_target_s=settings.wait_target_s,
            wait_targets=parse_wait_targets(settings.wait_targets),
            cost_labels=parse_labels(settings.cost_labels),
            budgets=parse_budgets(settings.cost_budgets),
        )
        self.collector = SnapshotCollector()
        self.metrics.registry.register(self.collector)
        self.state = ServiceState()
        self.metrics.nats_connected.set_function(
            lambda: 1.0 if self.state.nc is not None and self.state.nc.is_connected else 0.0
        )
        # NATS outages are handled inside the loops; what kills one is a bug or something
        # unforeseen: the supervisor logs it, restarts the loop and names it in /readyz meanwhile.
        self.supervisor = Supervisor("metrics", self.metrics.registry)

    def start(self) -> None:
        """Start in the background so /healthz answers even while NATS is unreachable."""
        self.supervisor.start("setup", self._setup)

    async def _setup(self) -> None:
        """Connect, set up the streams, start the two loops; done then (a failure: tried again)."""
        if self.state.nc is None:
            # taskyard_common's connect retries forever, so this waits for NATS to come up.
            self.state.nc = await connect(self.topo.settings.url, "taskyard-metrics")
        self.state.setup = "setting up JetStream streams"
        js = self.state.nc.jetstream()
        try:
            await ensure_streams(js, self.topo)
        except (nats.errors.Error, TimeoutError) as err:
            self.state.setup = f"cannot set up JetStream streams: {err!r}"
            raise
        self.state.setup = "ok"
        log.info("JetStream ready; consuming %s as %s", self.topo.events_stream, self.topo.metrics_durable)
        nc = self.state.nc
        consumer = events_consumer(nc, self.topo, self.metrics, self.settings)
        # On stop the consumer counts and acks the batch in hand (not redelivered after ack_wait).
        self.supervisor.start(
            "events",
            lambda: run_consumer(nc, self.topo, self.metrics, self.settings, self.state, consumer),
            stop=consumer.stop,
        )
        self.supervisor.start(
            "poller",
            lambda: run_poller(
                js, self.topo, self.metrics, self.collector, self.settings.poll_interval_s, self.state
            ),
        )

    async def stop(self) -> None:
        """Cancel the loops and close the connection (lifespan shutdown)."""
        await self.supervisor.stop()
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
            **self.supervisor.checks(),
        }
