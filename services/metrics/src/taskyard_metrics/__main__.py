"""`python -m taskyard_metrics`: serve the metrics app with uvicorn."""

import uvicorn

from taskyard_common.logging_setup import setup_logging, uvicorn_log_config

from .app import create_app
from .settings import MetricsSettings


def main() -> None:
    """Run until SIGINT/SIGTERM."""
    settings = MetricsSettings()
    setup_logging("taskyard-metrics", settings.log_level)
    # Scrapes every few seconds would drown everything else in access-log lines.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(),
        access_log=False,
    )


if __name__ == "__main__":
    main()
