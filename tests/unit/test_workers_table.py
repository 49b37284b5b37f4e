"""The console's workers table: what one row says about a worker."""

from taskyard_ui.routes_workers import workers_fragments


def _worker(**extra) -> dict:
    return {
        "id": "w1", "state": "healthy", "queues": ["default"], "slots": 2, "slots_used": 1,
        "running": [], "stuck_jobs": [], "last_heartbeat_age_s": 1.0, "jobs_done": 3,
        "jobs_failed": 0, "host": "vm", "pid": 7, "version": "0.1", **extra,
    }  # fmt: skip


def test_a_rest_workers_host_names_the_api_process_serving_it():
    html = workers_fragments([_worker(host="rest via vm", via="edc44fdb")])["workers-table"]
    assert "rest via vm" in html and "(api <code>edc44fdb</code>)" in html


def test_an_executors_host_has_no_api_process():
    html = workers_fragments([_worker(via=None)])["workers-table"]
    assert "(api " not in html
