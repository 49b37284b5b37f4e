"""One logging setup for every service: plain text (default) or JSON lines with trace ids.

`TASKYARD_LOG_FORMAT=json` turns each record into one JSON object per line (time, level, logger,
message, service, and trace_id/span_id when an OpenTelemetry span is current) so a log pipeline
can parse it and jump from a line to its trace.
"""

import json
import logging
import os
from datetime import UTC, datetime

from opentelemetry import trace

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; adds the current span's ids when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        # Formatting runs in the thread/task that logged, so the current span is the caller's.
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            line["trace_id"] = format(context.trace_id, "032x")
            line["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_format() -> str:
    """`json` or `plain`, from TASKYARD_LOG_FORMAT (anything else is refused by name)."""
    value = os.environ.get("TASKYARD_LOG_FORMAT", "plain").strip().lower() or "plain"
    if value not in ("plain", "json"):
        raise ValueError(f"TASKYARD_LOG_FORMAT must be 'plain' or 'json', not {value!r}")
    return value


def setup_logging(service: str, level: str | int = logging.INFO) -> None:
    """Configure the root logger for `service` (replaces logging.basicConfig in each __main__)."""
    handler = logging.StreamHandler()
    if log_format() == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)


def uvicorn_log_config() -> dict | None:
    """What to pass as uvicorn.run(log_config=...): its own config for plain text; None for JSON,
    so uvicorn's loggers keep no handlers of their own and their lines reach the JSON handler."""
    if log_format() == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG  # every service that serves HTTP has uvicorn

    return LOGGING_CONFIG
