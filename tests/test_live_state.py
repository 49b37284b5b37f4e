"""What the API says about running jobs and positions is current, not a cached moment ago.

Busy slots: a worker puts its heartbeat ~50 ms after a job starts or ends and the API applies it
from a KV watch, so a burst is shown within 200 ms of its last start (the bound asserted here;
docs/api.md states 100 ms as the design figure, this leaves room for a loaded CI box).

Positions: read per request from consumer info (single flight, never cached), so every answer
lies between brute-force counts taken right before and right after the call.
"""

import asyncio
import json
import random
import threading
import time
from datetime import datetime

import httpx
import nats
import pytest

from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology

from .stack import run_async

pytestmark = pytest.mark.one_database(
    "sqlite", why="slots and positions come from heartbeats and JetStream consumers"
)

FRESH_S = 0.2
# The default heartbeat interval: only a heartbeat on change can show the burst in time.
INTERVAL_5S = {"TASKYARD_NATS_HEARTBEAT_INTERVAL_S": "5"}


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class HeartbeatWatch(threading.Thread):
    """Records when each job first appears in a heartbeat, as the test process receives it."""

    def __init__(self, stack) -> None:
        super().__init__(daemon=True)
        self.url, self.bucket = stack.nats.url, Topology(NatsSettings(prefix=stack.prefix)).workers_bucket
        self.first_seen: dict[str, tuple[float, float]] = {}  # job id → (started_at, received at)
        self.ready, self.stop = threading.Event(), threading.Event()

    def run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        nc = await nats.connect(self.url)
        watcher = await (await nc.jetstream().key_value(self.bucket)).watchall()
        self.ready.set()
        while not self.stop.is_set():
            try:
                entry = await watcher.updates(timeout=0.2)
            except nats.errors.TimeoutError:
                continue
            if entry is not None and entry.value:
                for job in json.loads(entry.value)["running"]:
                    self.first_seen.setdefault(job["id"], (job["started_at"], time.time()))
        await nc.close()


@pytest.mark.serial  # a bound on time: run alone, after the parallel pass
def test_a_burst_shows_all_slots_busy_within_200ms_of_the_last_start(stack):
    stack.start_api(**INTERVAL_5S)
    stack.start_executor(slots=4, **INTERVAL_5S)
    watch = HeartbeatWatch(stack)
    watch.start()
    assert watch.ready.wait(30)
    with stack.http() as c:
        spec = {"type": "sleep", "payload": {"seconds": 10}}
        jobs = [j["id"] for j in c.post("/api/v1/jobs:batch", json={"jobs": [spec] * 8}).json()["jobs"]]
        # (time the request was sent, "workers" or job id, answer), until 1.5 s after the 4th start.
        readings: list[tuple[float, str, dict]] = []
        last_start = None
        deadline = time.monotonic() + 30  # generous: the jobs must start, however busy the box is
        while time.monotonic() < deadline:
            sent = time.time()
            readings.append((sent, "workers", c.get("/api/v1/workers").json()))
            for job_id in jobs:
                sent = time.time()
                readings.append((sent, job_id, c.get(f"/api/v1/jobs/{job_id}").json()))
            started = [r[2]["started_at"] for r in readings[-8:] if r[2]["status"] == "running"]
            if last_start is None and len(started) == 4:
                last_start = max(_epoch(s) for s in started)
            if last_start is not None and time.time() > last_start + 1.5:
                break
            time.sleep(0.02)
    assert last_start is not None, "4 jobs never ran"
    final = {r[1]: r[2] for r in readings}
    running = {j for j in jobs if final[j]["status"] == "running"}
    assert len(running) == 4, [final[j]["status"] for j in jobs]

    checked = 0
    for sent, what, answer in readings:
        if sent < last_start + FRESH_S:
            continue
        if what == "workers":
            [w] = answer["workers"]
            assert (w["slots_used"], w["slots"]) == (4, 4), (sent - last_start, w)
            assert {r["id"] for r in w["running"]} == running, (sent - last_start, w)
            checked += 1
        elif what not in running:
            reason = answer["waiting_reason"]
            assert answer["status"] == "queued", answer
            assert reason["code"] == "all_busy", (sent - last_start, reason)
            assert (reason["evidence"]["busy"], reason["evidence"]["slots"]) == (4, 4), reason
    assert checked >= 3, f"only {checked} workers readings taken in the 1.3 s after the bound"

    # Figures for docs/api.md: job start → its first heartbeat received; → first GET /workers
    # answer listing it (sent time; includes the polling gaps between readings).
    watch.stop.set()
    watch.join(10)
    lags = {job: round(received - started, 3) for job, (started, received) in watch.first_seen.items()}
    assert set(lags) >= running and all(lags[j] <= FRESH_S for j in running), lags
    shown = {}
    for sent, what, answer in readings:
        if what == "workers":
            for r in answer["workers"][0]["running"]:
                shown.setdefault(r["id"], round(sent - r["started_at"], 3))
    print(f"job start → heartbeat received {sorted(lags.values())}; → GET /workers {sorted(shown.values())}")


async def _seqs_in_stream(nc, stream: str, subject: str) -> list[int]:
    """Brute force: the stream sequence of every message still on `subject` (one batched get)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        body = json.dumps({"seq": 1, "next_by_subj": subject, "batch": 10_000}).encode()
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", body, reply=inbox)
        seqs = []
        while True:
            msg = await sub.next_msg(timeout=10)
            if (msg.headers or {}).get("Status"):  # 204 end of batch, or 404 none at all
                return seqs
            seqs.append(int(msg.headers["Nats-Sequence"]))
    finally:
        await sub.unsubscribe()


async def _read_while_draining(stack, jobs: dict[int, str]) -> list[tuple[int, int, int | None]]:
    """(brute count before, brute count after, position) of jobs picked near the front, until empty."""
    topo = Topology(NatsSettings(prefix=stack.prefix))
    stream, subject = topo.jobs_stream, topo.job_subject("default", "normal")
    rng = random.Random(3)
    readings = []
    nc = await nats.connect(stack.nats.url)
    headers = {"Authorization": f"Bearer {stack.admin_key}"}
    try:
        async with httpx.AsyncClient(base_url=stack.api.url, headers=headers, timeout=30) as c:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                left = await _seqs_in_stream(nc, stream, subject)
                if not left:
                    return readings
                seq = left[min(len(left) - 1, rng.choice([0, 0, 1, 2, 5, 10, 30, 100]))]
                before = sum(1 for s in left if s < seq)
                answer = (await c.get(f"/api/v1/jobs/{jobs[seq]}")).json()
                after_left = await _seqs_in_stream(nc, stream, subject)
                if answer["status"] != "queued" or seq not in after_left:
                    continue  # started or done by now: no position to check
                after = sum(1 for s in after_left if s < seq)
                readings.append((before, after, answer["queue_position"]))
    finally:
        await nc.close()
    raise TimeoutError(f"queue not drained in 120 s ({len(readings)} readings)")


@pytest.mark.serial  # a bound on time: run alone, after the parallel pass
def test_positions_while_one_slot_drains_lie_between_brute_force_counts(stack):
    stack.start_api()
    spec = {"type": "sleep", "payload": {"seconds": 0.01}}
    with stack.http() as c:
        jobs = {}
        for _ in range(2):
            for j in c.post("/api/v1/jobs:batch", json={"jobs": [spec] * 250}).json()["jobs"]:
                jobs[j["stream_seq"]] = j["id"]
    stack.start_executor(slots=1, wait=False)
    readings = run_async(_read_while_draining(stack, jobs))
    # The brute counts include the jobs in flight (delivered, not yet acked): the one running and
    # the one before it whose outcome is still being reported (its slot is already free), so a
    # position, which counts jobs still to be delivered, may be up to two below the count taken
    # after the call.
    wrong = [
        r for r in readings if r[2] is None and r[1] > 2 or r[2] is not None and not r[1] - 2 <= r[2] <= r[0]
    ]
    moving = [r for r in readings if r[1] < r[0]]
    assert not wrong, f"{len(wrong)} of {len(readings)} positions outside [after - 2, before]: {wrong[:10]}"
    assert len(moving) >= 30, f"only {len(moving)} readings while the queue moved"
    print(f"{len(readings)} position readings, {len(moving)} while the queue moved: all within the counts")
