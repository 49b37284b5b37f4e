"""One trace per job: API request → NATS message → executor attempt, exported over real OTLP/HTTP."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .stack import free_port

pytestmark = pytest.mark.one_database(
    "sqlite", why="trace propagation through NATS headers from api to executor"
)


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver: collects (service, span name, trace id, attributes)."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    service = next(
                        a.value.string_value for a in rs.resource.attributes if a.key == "service.name"
                    )
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            receiver.spans.append(
                                {
                                    "service": service,
                                    "name": span.name,
                                    "trace_id": span.trace_id.hex(),
                                    "attrs": {a.key: a.value for a in span.attributes},
                                }
                            )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()


def test_api_and_executor_spans_share_the_jobs_trace(stack):
    receiver = OtlpReceiver()
    try:
        otel = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        stack.start_api(**otel)
        stack.start_executor(handlers="handlers_for_tests", **otel)
        with stack.http() as c:
            job = c.post(
                "/api/v1/jobs",
                json={"type": "flaky", "payload": {"succeed_on": 2}, "backoff": {"base_s": 0.1}},
            )
            job = job.json()
        assert job["trace_id"] and len(job["trace_id"]) == 32
        stack.wait_status(job["id"], "succeeded")
        deadline = time.monotonic() + 20
        wanted = {
            ("taskyard-api", "taskyard.submit"),
            ("taskyard-api", "taskyard.job.enqueue"),
            ("taskyard-executor", "taskyard.job.queue_wait"),
            ("taskyard-executor", "taskyard.job.run"),
        }
        while time.monotonic() < deadline:
            mine = [s for s in receiver.spans if s["trace_id"] == job["trace_id"]]
            runs = [s for s in mine if s["name"] == "taskyard.job.run"]
            # Each attempt's span is exported by its own batch: wait for both attempts.
            if wanted <= {(s["service"], s["name"]) for s in mine} and len(runs) >= 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"spans of the job's trace: {[(s['service'], s['name']) for s in mine]}")
        assert len(runs) == 2  # one span per attempt, both in the job's trace
        assert sorted(s["attrs"]["taskyard.attempt"].int_value for s in runs) == [1, 2]
        assert all(s["attrs"]["taskyard.job.id"].string_value == job["id"] for s in runs)
    finally:
        receiver.close()
