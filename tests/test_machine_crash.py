"""A machine crash, not a process crash: nats-server's store (and the SQLite file) live on a LazyFS
mount that drops every write not fsynced (tests/crash_node.py). Jobs are in flight on the node
(finished, running, queued); every process of the node is killed, the unsynced writes dropped, and
the node restarted. Every accepted job must end exactly once; the reconciler makes up for what the
stream lost (docs/operations.md, "Durability"). Each case prints its counts."""

import json
import os
import time
from collections import Counter
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError

from taskyard_common.embedded import free_port
from taskyard_common.synced_nats import SyncedNats

from .conftest import create_key
from .crash_node import on_disk, sqlite_checkpoint
from .invariants import query
from .stack import Stack, metric, run_async, wait_until

# 600 keeps each case near 30 s here; the 2,000: TASKYARD_CRASH_JOBS=2000.
JOBS = int(os.environ.get("TASKYARD_CRASH_JOBS", "600"))
FAST = {
    "TASKYARD_API_RECONCILE_INTERVAL_S": "0.5",
    "TASKYARD_API_RECONCILE_MIN_AGE_S": "2",
    "TASKYARD_API_OUTBOX_GRACE_S": "0.5",
    "TASKYARD_API_OUTBOX_INTERVAL_S": "0.5",
}


def _jobs_messages(url: str, prefix: str) -> int:
    async def go() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().stream_info(f"{prefix.upper()}_JOBS")).state.messages
        except NotFoundError:
            return -1  # the stream itself was lost
        finally:
            await nc.close()

    return run_async(go())


def _ends(runs_log: Path, crash_at: float) -> tuple[Counter, Counter]:
    """Runs that ended per job, before and after the crash (key_probe's `end` lines)."""
    before, after = Counter(), Counter()
    for line in runs_log.read_text().splitlines():
        kind, job_id, at, _ = line.split()
        if kind == "end":
            (before if float(at) < crash_at else after)[job_id] += 1
    return before, after


def _data(value) -> dict:
    return json.loads(value) if isinstance(value, str) else value


@pytest.mark.parametrize(
    ("sync_interval", "synchronous"),
    [(None, "FULL"), ("always", "FULL"), ("always", "NORMAL")],
    ids=["sync-default", "sync-always", "sync-always-sqlite-normal"],
)
def test_every_accepted_job_ends_once_after_a_machine_crash(
    lazy_disk, db_url, tmp_path, sync_interval, synchronous
):
    if not db_url.startswith("sqlite") and (synchronous == "NORMAL" or sync_interval == "always"):
        # PostgreSQL is not on the crashing disk: with `always` it is the SQLite FULL case again
        # (measured once: 1,000 jobs, nothing resent), and CI's time is short.
        pytest.skip("the SQLite case covers it")
    disk = lazy_disk.mountpoint
    url = on_disk(db_url, disk)
    nats_server = SyncedNats(
        disk / "nats", free_port(), free_port(), tmp_path / "nats.log", sync_interval=sync_interval
    ).start()
    stack = Stack(nats=nats_server, db_url=url, tmp=tmp_path)
    stack.extra_env.update(FAST, TASKYARD_DB_SQLITE_SYNCHRONOUS=synchronous)
    if synchronous == "NORMAL":
        # Only the test's own checkpoint (midway, below): one of SQLite's every 1,000 pages coming
        # after the last commit left the crash nothing to take (twice in four CI runs, stop 33).
        stack.extra_env["TASKYARD_DB_SQLITE_WAL_AUTOCHECKPOINT"] = "0"
    try:
        stack.admin_key = create_key(url, "admin", "admin")
        if url.startswith("sqlite"):
            sqlite_checkpoint(url)
        runs_log = tmp_path / "runs.log"
        runs_log.touch()
        stack.start_api()
        stack.start_executor(handlers="handlers_for_tests", slots=16)
        # Most jobs end within the executor's 50 ms start window (one event); one in ten runs
        # longer, so the database holds `running` rows when the machine crashes.
        quick, slow = (
            {"type": "key_probe", "payload": {"log": str(runs_log), "seconds": s}} for s in (0.02, 0.4)
        )
        specs = [slow if n % 10 == 0 else quick for n in range(JOBS)]
        accepted: set[str] = set()
        with stack.http() as c:
            for start in range(0, JOBS, 250):
                r = c.post("/api/v1/jobs:batch", json={"jobs": specs[start : start + 250]})
                assert r.status_code == 201, r.text
                accepted |= {job["id"] for job in r.json()["jobs"]}
                if synchronous == "NORMAL" and start + 250 >= JOBS // 2 > start:
                    # A WAL checkpoint midway (SQLite makes one every 1,000 pages): the rows
                    # submitted so far survive the crash, the outcomes projected after it do not,
                    # while their JOBS messages are acked; the second half's rows are lost.
                    sqlite_checkpoint(url)
        wait_until(lambda: runs_log.read_text().count("end ") >= JOBS // 3, timeout=30, what="a third done")

        # The machine crashes: every process of the node (the executor first: a run it ends after
        # `crash_at` is after the crash), then its page cache.
        for svc in reversed(stack.services):
            svc.kill9()
        crash_at = time.time()
        nats_server.kill()
        lazy_disk.crash()

        nats_server.start()
        rows = dict(query(url, "SELECT status, COUNT(*) FROM jobs GROUP BY status"))
        lost_rows = accepted - {job_id for (job_id,) in query(url, "SELECT id FROM jobs")}
        unfinished = sum(n for s, n in rows.items() if s in ("queued", "running", "retrying"))
        messages = _jobs_messages(nats_server.url, stack.prefix)
        api = stack.start_api()
        stack.start_executor(handlers="handlers_for_tests", slots=16)

        def all_final() -> dict[str, str] | None:
            states = dict(query(url, "SELECT id, status FROM jobs"))
            final = ("succeeded", "failed", "dead", "cancelled")
            if synchronous == "FULL":
                done = all(states.get(i) in final for i in accepted)
            else:  # rows lost with their jobs' messages never come back: wait for the rest
                # (when the crash took rows: it may not, if a WAL checkpoint came just before it)
                recreated = query(url, "SELECT COUNT(*) FROM job_events WHERE type = 'reconciled'")[0][0]
                done = (recreated > 0 or not lost_rows) and all(s in final for s in states.values())
            return states if done else None

        try:
            states = wait_until(all_final, timeout=60, what="every accepted job final")
        except TimeoutError:
            states = dict(query(url, "SELECT id, status FROM jobs"))
            missing = [i for i in accepted if i not in states]
            stuck = Counter(states[i] for i in accepted if i in states)
            if synchronous == "FULL" or set(stuck) - {"succeeded"}:
                raise AssertionError(
                    f"missing from the database: {len(missing)}; states: {dict(stuck)}"
                ) from None
        actions = Counter(
            _data(d)["action"] for (d,) in query(url, "SELECT data FROM job_events WHERE type = 'reconciled'")
        )
        ended = Counter(
            job_id for (job_id,) in query(url, "SELECT job_id FROM job_events WHERE type = 'succeeded'")
        )
        record_lost = metric(api.url, "taskyard_api_reconciled_total", action="record_lost")
        duplicate_runs = query(url, "SELECT COUNT(*) FROM job_events WHERE type = 'duplicate_run'")[0][0]
        before, after = _ends(runs_log, crash_at)
        gone = [i for i in accepted if i not in states]
        print(
            f"\nmachine crash (sync_interval={sync_interval or 'default (2 min)'}, SQLite synchronous="
            f"{synchronous if url.startswith('sqlite') else 'n/a (PostgreSQL)'}): {len(accepted)} accepted "
            f"({len(lost_rows)} rows lost in the crash), "
            f"{len(before)} ended before the crash; after it the database held {unfinished} unfinished "
            f"rows and JOBS {messages if messages >= 0 else 'no stream (lost)'} messages; reconciler: "
            f"republished {actions['republished']}, requeued {actions['requeued']}, re-created "
            f"{actions['recreated']}, replayed {actions['replayed']} (outcomes the database lost), "
            f"record lost {record_lost:.0f}; gone from the database having run after the crash only: "
            f"{sum(1 for i in gone if after[i] and not before[i])}; ran again after the crash (outcome lost): "
            f"{sum(1 for i in after if before[i])}; duplicate_run rows {duplicate_runs}; ended twice "
            f"{sum(1 for n in ended.values() if n > 1)}; gone from the database {len(gone)}"
        )
        assert not [i for i, n in after.items() if n > 1], "a job ran twice after the restart"
        # Also with NORMAL: a run whose outcome the catch-up projects after another run's is a
        # duplicate_run (a crash that took the database's commits may take JOBS' acks too).
        assert not [i for i, n in ended.items() if n > 1], "a job ended twice"
        if synchronous == "FULL":
            assert not gone, f"{len(gone)} accepted jobs gone"
            assert all(states[i] == "succeeded" for i in accepted)
        else:
            # SQLite lost its commits since the last checkpoint: jobs whose message was still in
            # JOBS got their row back; those that had already run and been acked are gone from the
            # database, and so are those an executor ran after the restart before the reconciler's
            # first scan gave them a row back: they ran once, their record is what was lost
            # (docs/operations.md). None is gone without having run.
            assert actions["recreated"] > 0 or not lost_rows, f"{len(lost_rows)} rows lost, none re-created"
            assert all(before[i] or after[i] for i in gone), "an accepted job gone without having run"
            assert all(states[i] == "succeeded" for i in accepted if i in states)
        if sync_interval == "always":
            # The stream lost nothing it had acknowledged: nothing to make up for. With SQLite
            # NORMAL the rows the checkpoint kept went back to `queued`/`running` while their
            # outcomes, projected into the lost commits, stay in EVENTS: the projector projects
            # them again at start (Projector.catch_up), so none is sent again to run a second time
            # (before it did that, 177 of 2,000 were).
            assert actions["republished"] == actions["requeued"] == 0, actions
        if synchronous == "NORMAL":
            assert actions["replayed"] > 0, "the crash took no projected outcome: not a test"
            # Not silently gone: each job that ran without a row left is counted and logged.
            assert record_lost >= len(gone), (record_lost, len(gone))
        elif sync_interval is None:
            assert actions["republished"] + actions["requeued"] > 0, "the crash lost nothing: not a test"
    finally:
        for svc in stack.services:
            if svc.alive():
                svc.kill9()
        nats_server.kill()


def test_a_marking_the_crash_took_is_made_up_for_and_the_job_runs_once(lazy_disk, db_url, tmp_path):
    """The outbox's marking (the stream sequence and the `queued` row) commits without an fsync
    (db.unsynced): the next commit that syncs takes it to disk. Four jobs submitted one at a time
    with no executor, then one delayed 1 s: the gate timer's commit that makes it due syncs (and
    takes the four markings to disk), its marking follows and has no later commit, so the crash
    takes it while its row stays. (A submitted job's marking may be caught by its own row's fsync,
    which runs on a thread while the job is published: on a loaded machine it began after the
    marking in one CI run, so the last job is not a plain submit.) After the restart the outbox
    publishes it again and it runs once, like every other accepted job."""
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL is not on the crashing disk")
    disk = lazy_disk.mountpoint
    url = on_disk(db_url, disk)
    nats_server = SyncedNats(disk / "nats", free_port(), free_port(), tmp_path / "nats.log").start()
    stack = Stack(nats=nats_server, db_url=url, tmp=tmp_path)
    stack.extra_env.update(FAST)
    try:
        stack.admin_key = create_key(url, "admin", "admin")
        sqlite_checkpoint(url)
        stack.start_api()
        spec = {"type": "noop"}  # built in: no executor runs before the crash
        with stack.http() as c:
            accepted = []
            for body in [spec] * 4 + [{**spec, "delay_s": 1.0}]:
                r = c.post("/api/v1/jobs", json=body)
                assert r.status_code == 201, r.text
                accepted.append(r.json()["id"])
            # Its position is said once it is marked: JOBS has it and the row says so, for now.
            last = f"/api/v1/jobs/{accepted[-1]}"
            wait_until(lambda: c.get(last).json()["queue_position"] == 4, 10, "the last job at position 4")

        for svc in reversed(stack.services):
            svc.kill9()
        nats_server.kill()
        lazy_disk.crash()

        nats_server.start()
        rows = dict(query(url, "SELECT id, outbox_at IS NULL FROM jobs"))
        assert set(rows) == set(accepted), "an accepted job's row was lost"
        unmarked = [job_id for job_id in accepted if not rows[job_id]]
        print(f"\nmarkings lost in the crash: {len(unmarked)} of {len(accepted)} ({unmarked})")
        assert unmarked == accepted[-1:], "the crash took no marking (or more than the last): not a test"
        stack.start_api()
        stack.start_executor(slots=4)

        def all_succeeded() -> bool:
            states = dict(query(url, "SELECT id, status FROM jobs"))
            return all(states[i] == "succeeded" for i in accepted)

        wait_until(all_succeeded, timeout=30, what="every accepted job succeeded")
        time.sleep(1)  # a second run would show by now: a second outcome, or a duplicate_run row

        def per_job(kind: str) -> Counter:
            return Counter(j for (j,) in query(url, f"SELECT job_id FROM job_events WHERE type = '{kind}'"))

        assert per_job("succeeded") == Counter(accepted) and not per_job("duplicate_run")
        # The lost marking is made once, after the restart (the others, whose JOBS messages the
        # crash took, are queued again by the reconciler: a second `queued` row each).
        assert per_job("queued")[unmarked[0]] == 1
    finally:
        for svc in stack.services:
            if svc.alive():
                svc.kill9()
        nats_server.kill()
