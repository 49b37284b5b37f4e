"""An event the projector cannot apply is skipped (logged, counted); projection goes on."""

import json

import httpx

from .stack import run_async, wait_until


def test_an_unprojectable_event_is_skipped_and_projection_goes_on(stack):
    api = stack.start_api()
    stack.start_executor()
    with stack.http() as c:
        first = c.post("/api/v1/jobs", json={"type": "noop"}).json()
        stack.wait_status(first["id"], "succeeded")

        async def poison() -> None:
            import nats

            from taskyard_common.settings import NatsSettings
            from taskyard_common.topology import Topology

            topo = Topology(NatsSettings(prefix=stack.prefix))
            nc = await nats.connect(stack.nats.url)
            try:
                # A `waiting` event without its checkpoint: projecting it raises (a KeyError).
                event = {"job_id": first["id"], "type": "waiting", "attempt": 1, "data": {}}
                await nc.jetstream().publish(topo.event_subject(first["id"]), json.dumps(event).encode())
            finally:
                await nc.close()

        run_async(poison())
        later = c.post("/api/v1/jobs", json={"type": "noop"}).json()
        stack.wait_status(later["id"], "succeeded")

    def skipped() -> float:
        lines = httpx.get(f"{api.url}/metrics").text.splitlines()
        return sum(
            float(x.split()[-1]) for x in lines if x.startswith("taskyard_api_events_unprojectable_total")
        )

    wait_until(lambda: skipped() == 1, 10, "the skipped event to be counted")
    assert "cannot project event" in api.output()
