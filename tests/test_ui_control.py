"""UI admin controls (drain/stop behind a confirmation, pause all) and the audit page, over HTTP."""

import httpx
import pytest

from tests.conftest import create_key
from tests.stack import wait_until

pytestmark = pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)


def ui_client(ui, key: str) -> httpx.Client:
    return httpx.Client(base_url=ui.url, cookies={"taskyard_key": key}, timeout=30)


def test_admin_drains_a_worker_from_the_ui_after_confirming_and_viewers_cannot(stack):
    stack.start_api(TASKYARD_API_WEBHOOK_SECRET="ui-test-secret")
    worker = stack.start_executor()
    ui = stack.start_ui()
    viewer = create_key(stack.db_url, "watcher", "viewer")
    with stack.http() as api:
        wait_until(lambda: api.get("/api/v1/workers").json()["workers"], 30, "a worker")
        wid = api.get("/api/v1/workers").json()["workers"][0]["id"]
        hook = {"url": "http://127.0.0.1:9/nobody-listens", "on": ["succeeded"]}
        job = api.post("/api/v1/jobs", json={"type": "noop", "notify": hook}).json()
        stack.wait_status(job["id"], "succeeded")
        wait_until(
            lambda: api.get(f"/api/v1/jobs/{job['id']}/notifications").json()["notifications"][0]["attempts"],
            30,
            "a first try",
        )
    with ui_client(ui, viewer) as c:
        page = c.get("/workers").text
        assert f'id="drain-{wid}"' not in page and "Pause all queues" not in page
        refused = c.post(f"/workers/{wid}/drain", data={"confirm": "yes"})
        assert refused.status_code == 403 and "may not do this" in refused.text
        assert c.get("/audit").status_code == 403
    with ui_client(ui, stack.admin_key) as c:
        shown = c.get(f"/jobs/{job['id']}").text  # each delivery and its answer, on the job's page
        assert "Webhook" in shown and "nobody-listens" in shown and "ConnectError" in shown
        page = c.get("/workers").text
        assert f'id="drain-{wid}"' in page and f'id="stop-{wid}"' in page and 'href="/audit"' in page
        confirm = c.get(f"/workers/{wid}/drain")
        assert confirm.status_code == 200 and f"Drain worker {wid}?" in confirm.text
        unconfirmed = c.post(f"/workers/{wid}/drain")  # no confirmation: back to the question
        assert unconfirmed.status_code == 303 and unconfirmed.headers["location"] == f"/workers/{wid}/drain"
        assert worker.alive()
        paused = c.post("/control/queues/pause", data={"confirm": "yes"})
        assert paused.status_code == 303, paused.text
        done = c.post(f"/workers/{wid}/drain", data={"confirm": "yes"})
        assert done.status_code == 303 and done.headers["location"] == "/workers?done=drain"
        wait_until(lambda: not worker.alive(), 30, "the drained worker to exit")
        audit = c.get("/audit").text
        assert "worker.drain" in audit and "queues.pause_all" in audit and "watcher" in audit
        refused_only = c.get("/audit", params={"outcome": "refused"}).text
        assert "watcher" in refused_only and "queues.pause_all" not in refused_only
