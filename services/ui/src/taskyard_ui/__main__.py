"""`python -m taskyard_ui`: serve the web UI with uvicorn."""

import logging

import uvicorn

from .app import create_app
from .settings import UiSettings


def main() -> None:
    """Run until SIGINT/SIGTERM."""
    settings = UiSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
