"""What /readyz reports: the service's view of its NATS dependency, updated by the background tasks."""

from dataclasses import dataclass

from nats.aio.client import Client as NatsClient


@dataclass
class ServiceState:
    """Mutable status shared by the supervisor, the consumer, the poller and the HTTP routes."""

    nc: NatsClient | None = None
    setup: str = "connecting to NATS"
    consumer: str = "not started"
    poll: str = "not polled yet"
    last_poll_ok: float = 0.0
