"""Schedules on the real stack: input checks, the REST round trip, overlap policies, catch-up after
the api stopped, and one job per fire time with two api processes."""

import os
import signal
import time
from collections import Counter
from datetime import datetime

import pytest

from .conftest import create_key
from .invariants import query
from .stack import metric, wait_until

NEVER_SOON = "0 0 1 1 *"  # a fire a year away: the test fires by hand


def _schedule(c, **fields) -> dict:
    body = {"template": {"type": "noop"}, **fields}
    r = c.post("/api/v1/schedules", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _fires(c, schedule_id: str) -> list[dict]:
    return c.get(f"/api/v1/schedules/{schedule_id}/jobs", params={"limit": 1000}).json()["fires"]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "0 0 31 2 *"}, "cron"),  # valid, but never fires
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"every_s": 60, "overlap": "sometimes"}, "overlap"),
        ({"every_s": 60, "catch_up": "everything"}, "catch_up"),
        ({"every_s": 0.001}, "every_s"),
        ({"every_s": 60, "cron": "0 3 * * *"}, "cron, every_s"),
        ({"timezone": "UTC"}, "cron, every_s"),
        ({"every_s": 60, "template": {"type": "noop", "depends_on": ["x"]}}, "template"),
        ({"every_s": 60, "template": {"type": "noop", "run_at": "2030-01-01T00:00:00Z"}}, "template"),
        ({"every_s": 60, "template": {"type": "no-such-type"}}, "template.type"),
        ({"every_s": 60, "catch_up_max": 0}, "catch_up_max"),
        (
            {"every_s": 60, "template": {"type": "noop", "notify": {"url": "http://hooks.test/x"}}},
            "template.notify",
        ),
    ],
)
@pytest.mark.one_database("sqlite", why="input checks that refuse before any SQL")
def test_bad_input_is_a_422_naming_the_field_and_stores_nothing(stack, body, field):
    stack.start_api()
    with stack.http() as c:
        r = c.post("/api/v1/schedules", json={"template": {"type": "noop"}} | body)
        assert r.status_code == 422, r.text
        assert field in r.json()["detail"], r.json()
        assert c.get("/api/v1/schedules").json()["schedules"] == []
    assert query(stack.db_url, "SELECT COUNT(*) FROM schedules")[0][0] == 0


def test_create_preview_trigger_pause_resume_history_delete(stack):
    stack.start_api()
    with stack.http() as c:
        s = _schedule(c, name="nightly", cron="30 2 * * *", timezone="Europe/Berlin", overlap="allow")
        assert len(s["next_fires"]) == 5 and s["next_fires"][0].endswith(("+01:00", "+02:00"))
        assert all("T02:30:00" in f or "T03:00:00" in f for f in s["next_fires"])
        assert s["paused"] is False and s["next_fire_at"]
        fired = c.post(f"/api/v1/schedules/{s['id']}/trigger").json()
        job = fired["job"]
        assert (fired["kind"], fired["outcome"], job["type"]) == ("manual", "created", "noop")
        assert job["labels"]["taskyard.schedule"] == s["id"]
        one = c.get(f"/api/v1/schedules/{s['id']}").json()
        assert [f["job_id"] for f in one["recent_jobs"]] == [job["id"]]
        assert one["recent_jobs"][0]["job_status"] == "queued"
        assert c.get("/api/v1/schedules").json()["schedules"][0]["id"] == s["id"]

        paused = c.post(f"/api/v1/schedules/{s['id']}/pause").json()
        assert (paused["paused"], paused["next_fire_at"], paused["next_fires"]) == (True, None, [])
        resumed = c.post(f"/api/v1/schedules/{s['id']}/resume").json()
        assert resumed["paused"] is False and len(resumed["next_fires"]) == 5
        changed = c.patch(f"/api/v1/schedules/{s['id']}", json={"every_s": 3600}).json()
        assert (changed["cron"], changed["every_s"]) == (None, 3600)

        # Someone else's schedule: readable, not changeable; a viewer may not create one.
        other = create_key(stack.db_url, "other", "submitter")
        viewer = create_key(stack.db_url, "viewer", "viewer")
        with stack.http(other) as o:
            assert o.get(f"/api/v1/schedules/{s['id']}").status_code == 200
            assert o.post(f"/api/v1/schedules/{s['id']}/pause").status_code == 403
            assert o.delete(f"/api/v1/schedules/{s['id']}").status_code == 403
        with stack.http(viewer) as v:
            assert (
                v.post("/api/v1/schedules", json={"every_s": 60, "template": {"type": "noop"}}).status_code
                == 403
            )

        assert c.delete(f"/api/v1/schedules/{s['id']}").status_code == 204
        assert c.get(f"/api/v1/schedules/{s['id']}").status_code == 404
        assert c.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "queued"  # its jobs stay


def test_overlap_policies_while_the_previous_job_is_not_final(stack):
    """No executor: every job stays queued (not final), so each second fire meets an open one."""
    stack.start_api()
    with stack.http() as c:

        def trigger(s):
            return c.post(f"/api/v1/schedules/{s['id']}/trigger").json()

        allow = _schedule(c, cron=NEVER_SOON, overlap="allow")
        assert trigger(allow)["job"] and trigger(allow)["job"]

        skip = _schedule(c, cron=NEVER_SOON, overlap="skip")
        first = trigger(skip)["job"]
        second = trigger(skip)
        assert (second["outcome"], second["job"]) == ("skipped", None)
        assert first["id"] in second["reason"]

        cancel = _schedule(c, cron=NEVER_SOON, overlap="cancel_previous")
        old = trigger(cancel)["job"]
        new = trigger(cancel)["job"]
        assert c.get(f"/api/v1/jobs/{old['id']}").json()["status"] == "cancelled"
        assert c.get(f"/api/v1/jobs/{new['id']}").json()["status"] == "queued"

        queue_one = _schedule(c, cron=NEVER_SOON, overlap="queue_one")
        running = trigger(queue_one)["job"]
        waiting = trigger(queue_one)["job"]
        third = trigger(queue_one)
        assert waiting["status"] == "blocked"
        assert c.get(f"/api/v1/jobs/{waiting['id']}").json()["parents"][0]["id"] == running["id"]
        assert (third["outcome"], third["job"]) == ("skipped", None)
        # The running one ends: the waiting one is released, and the next fire may queue again.
        c.post(f"/api/v1/jobs/{running['id']}/cancel", params={"descendants": "leave"})
        stack.wait_status(waiting["id"], "queued", timeout=10)
        assert trigger(queue_one)["job"]["status"] == "blocked"


def test_a_revoked_owners_schedule_creates_no_job(stack):
    stack.start_api()
    key = create_key(stack.db_url, "leaver", "submitter")
    with stack.http(key) as mine:
        s = _schedule(mine, cron=NEVER_SOON)
        key_id = mine.get("/api/v1/whoami").json()["id"]
    with stack.http() as c:
        assert c.delete(f"/api/v1/keys/{key_id}").status_code == 204
        fired = c.post(f"/api/v1/schedules/{s['id']}/trigger").json()
    assert (fired["outcome"], fired["job"]) == ("failed", None) and "revoked" in fired["reason"]
    assert query(stack.db_url, "SELECT COUNT(*) FROM jobs")[0][0] == 0


def _fire_times(db_url: str, schedule_id: str) -> dict[float, str]:
    rows = query(db_url, f"SELECT fire_at, kind FROM schedule_fires WHERE schedule_id = '{schedule_id}'")
    return {round(at, 3): kind for at, kind in rows}


def _wait_next_fire(c, schedule_id: str, after: int) -> None:
    wait_until(lambda: len(_fires(c, schedule_id)) > after, timeout=10, what="a fire")


@pytest.mark.parametrize(("catch_up", "caught_up"), [("none", 0), ("latest", 1), ("all", 3)])
def test_catch_up_after_the_api_stopped_for_three_periods(stack, catch_up, caught_up):
    """The api is stopped (SIGSTOP) for 3.6 periods right after a fire, then continued: the three
    fire times it slept through are dropped (`none`), fired once (`latest`) or each (`all`)."""
    api = stack.start_api()
    with stack.http() as c:
        s = _schedule(c, every_s=1, catch_up=catch_up, catch_up_max=10)
        _wait_next_fire(c, s["id"], 0)
        n = len(_fires(c, s["id"]))
        _wait_next_fire(c, s["id"], n)
        os.kill(api.process.pid, signal.SIGSTOP)
        stopped = time.time()
        time.sleep(3.6)
        os.kill(api.process.pid, signal.SIGCONT)
        wait_until(lambda: max(_fire_times(stack.db_url, s["id"])) > stopped + 4.5, timeout=15, what="fires")
    fires = _fire_times(stack.db_url, s["id"])
    last_before = max(at for at in fires if at <= stopped)
    missed = [last_before + k for k in (1, 2, 3)]
    assert missed[-1] < stopped + 3.6 < last_before + 4  # exactly three fire times slept through
    fired = [at for at in missed if at in fires]
    assert len(fired) == caught_up, (catch_up, sorted(fires), stopped)
    assert all(fires[at] == "catch_up" for at in fired)
    if catch_up == "latest":
        assert fired == [missed[-1]]
    # Back on time afterwards, one fire per period, and one job per fire.
    assert last_before + 4 in fires and last_before + 5 in fires
    jobs = query(stack.db_url, "SELECT COUNT(*) FROM jobs")[0][0]
    assert jobs == len(fires)


def test_catch_up_all_after_a_real_restart(stack):
    """Killed and started again: the fire times missed meanwhile are caught up from the database."""
    api = stack.start_api()
    with stack.http() as c:
        s = _schedule(c, every_s=1, catch_up="all", catch_up_max=100)
        _wait_next_fire(c, s["id"], 0)
    api.kill9()
    killed = time.time()
    time.sleep(3.5)
    stack.start_api()
    with stack.http() as c:
        wait_until(
            lambda: max(_fire_times(stack.db_url, s["id"])) > time.time() - 0.5, timeout=15, what="fires"
        )
    fires = _fire_times(stack.db_url, s["id"])
    first, last = min(fires), max(fires)
    assert sorted(fires) == [first + k for k in range(int(last - first) + 1)]  # no fire time lost
    caught_up = [at for at, kind in fires.items() if kind == "catch_up"]
    assert len(caught_up) >= 3 and min(caught_up) < killed + 1.5, sorted(fires.items())


@pytest.mark.one_database("postgresql", why="several api processes share PostgreSQL only")
def test_two_apis_create_exactly_one_job_per_fire_time(stack, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("several api processes share PostgreSQL (SQLite is the one-process default)")
    env = {"TASKYARD_API_SCHEDULE_POLL_S": "0.5"}
    apis = [stack.start_api(**env), stack.start_api(**env)]
    with stack.http() as c:
        s = _schedule(c, every_s=0.05, catch_up="all", catch_up_max=1000)
        wait_until(lambda: len(_fires(c, s["id"])) >= 110, timeout=30, what="110 fires")
        c.post(f"/api/v1/schedules/{s['id']}/pause")
    time.sleep(0.3)  # a round in flight on the other api ends
    per_fire = Counter(
        label
        for (label,) in query(
            stack.db_url,
            f"SELECT labels->>'taskyard.fire_at' FROM jobs WHERE labels->>'taskyard.schedule' = '{s['id']}'",
        )
    )
    assert len(per_fire) >= 100
    assert set(per_fire.values()) == {1}, [f for f, n in per_fire.items() if n > 1][:5]
    # Every fire time of the grid between the first and the last has its job: none lost either.
    times = sorted(_epoch(f) for f in per_fire)
    steps = round((times[-1] - times[0]) / 0.05)
    assert len(times) == steps + 1, (len(times), steps)
    created = [metric(api.url, "taskyard_api_schedule_fires_total", outcome="created") for api in apis]
    lost = [metric(api.url, "taskyard_api_schedule_fires_total", outcome="lost") for api in apis]
    print(f"fires {len(per_fire)}: created per api {created}, lost races per api {lost}")
    assert sum(created) == len(per_fire) and all(created), (created, lost)
    for api in apis:
        assert api.alive(), api.output()[-2000:]
