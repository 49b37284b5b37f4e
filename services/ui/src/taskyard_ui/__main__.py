"""`python -m taskyard_ui`: serve the web UI with uvicorn."""

import uvicorn

from taskyard_common.logging_setup import setup_logging, uvicorn_log_config

from .app import create_app
from .settings import UiSettings


def main() -> None:
    """Run until SIGINT/SIGTERM."""
    settings = UiSettings()
    setup_logging("taskyard-ui", settings.log_level)
    # proxy_headers off: uvicorn's default trusts X-Forwarded-For from 127.0.0.1; the app honours
    # it only from forwarded_allow_ips (create_app).
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(),
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
