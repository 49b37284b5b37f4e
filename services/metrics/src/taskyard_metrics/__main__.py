"""`python -m taskyard_metrics`: serve the metrics app with uvicorn."""

import logging

import uvicorn

from .app import create_app
from .settings import MetricsSettings


def main() -> None:
    """Run until SIGINT/SIGTERM."""
    settings = MetricsSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Scrapes every few seconds would drown everything else in access-log lines.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
    )


if __name__ == "__main__":
    main()
