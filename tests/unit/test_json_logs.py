"""The JSON log formatter: one object per line, with the current span's ids when there is one."""

import json
import logging
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider

from taskyard_common.logging_setup import JsonFormatter, log_format


def _record(message: str = "hello %s", args: tuple = ("world",)) -> logging.LogRecord:
    return logging.LogRecord("taskyard.test", logging.WARNING, __file__, 1, message, args, None)


def test_a_record_without_a_span_has_no_trace_ids():
    line = json.loads(JsonFormatter("taskyard-api").format(_record()))
    assert line["message"] == "hello world"
    assert line["level"] == "WARNING"
    assert line["logger"] == "taskyard.test"
    assert line["service"] == "taskyard-api"
    assert line["time"].endswith("+00:00")
    assert "trace_id" not in line and "span_id" not in line


def test_a_record_inside_a_span_carries_its_trace_and_span_ids():
    # A local provider, not the global one: the test leaves no tracing state behind.
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        line = json.loads(JsonFormatter("taskyard-executor").format(_record()))
        context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert len(line["trace_id"]) == 32 and len(line["span_id"]) == 16


def test_an_exception_is_kept_in_the_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info())
    line = json.loads(JsonFormatter("s").format(record))
    assert "RuntimeError: boom" in line["exception"]


def test_log_format_defaults_to_plain_and_refuses_unknown_values(monkeypatch):
    monkeypatch.delenv("TASKYARD_LOG_FORMAT", raising=False)
    assert log_format() == "plain"
    monkeypatch.setenv("TASKYARD_LOG_FORMAT", "JSON")
    assert log_format() == "json"
    monkeypatch.setenv("TASKYARD_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="TASKYARD_LOG_FORMAT"):
        log_format()
