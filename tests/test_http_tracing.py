"""UI → API in one trace over real OTLP/HTTP, probes untraced, and JSON log lines with trace ids."""

import json
import time

import httpx
import pytest

from tests.test_tracing import OtlpReceiver

pytestmark = pytest.mark.one_database("sqlite", why="trace propagation over HTTP and JSON logs")

LOG_KEYS = {"time", "level", "logger", "message", "service"}


def json_lines(output: str) -> list[dict]:
    """Every non-empty line of a service's output, parsed as JSON (fails on the first that is not)."""
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_a_ui_page_and_its_api_calls_share_one_trace_and_logs_are_json(stack):
    receiver = OtlpReceiver()
    try:
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "TASKYARD_LOG_FORMAT": "json",
        }
        api = stack.start_api(**env)
        ui = stack.start_ui(**env)
        for svc in (api, ui):
            for probe in ("/healthz", "/readyz", "/metrics"):
                httpx.get(svc.url + probe, timeout=10)
        with httpx.Client(base_url=ui.url, cookies={"taskyard_key": stack.admin_key}, timeout=30) as c:
            assert c.get("/jobs").status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pages = [s for s in receiver.spans if (s["service"], s["name"]) == ("taskyard-ui", "GET /jobs")]
            page_traces = {s["trace_id"] for s in pages}
            joined = [
                s for s in receiver.spans if s["service"] == "taskyard-api" and s["trace_id"] in page_traces
            ]
            if joined:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"spans: {[(s['service'], s['name']) for s in receiver.spans]}")
        assert {s["name"] for s in joined} >= {"GET /api/v1/jobs"}
        assert len(page_traces) == 1  # the page's spans are one trace, not one per middleware
        paths = {s["attrs"]["url.path"].string_value for s in receiver.spans if "url.path" in s["attrs"]}
        assert not paths & {"/healthz", "/readyz", "/metrics"}, paths

        ui_lines, api_lines = json_lines(ui.output()), json_lines(api.output())
        assert ui_lines and api_lines
        assert all(LOG_KEYS <= line.keys() for line in ui_lines + api_lines)
        assert {line["service"] for line in ui_lines} == {"taskyard-ui"}
        assert {line["service"] for line in api_lines} == {"taskyard-api"}
        # uvicorn's access line for the page is written inside the page's span.
        assert any(line.get("trace_id") in page_traces for line in ui_lines), ui_lines[-5:]
    finally:
        receiver.close()
