"""A machine crash with checkpoints waiting and decided just before it (issue 21).

Jobs park at a checkpoint (approvals and questions); most are decided through the API while the
node runs, and the machine crashes (tests/crash_node.py) while the last decisions are still being
answered. What must hold after the restart: every decision whose call answered 2xx reaches its job
and the job ends as decided, once; a call that got no answer or a 5xx is either applied or
visibly not (its checkpoint still pending, and a retry decides it); checkpoints nobody decided are
still waiting and can be decided. The database is the record of decisions: what the stream lost
(a `decided` event in the job's journal, the continuation's JOBS message) the reconciler sends
again (docs/operations.md, "Durability"). Each case prints its counts."""

import asyncio
import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nats
import pytest
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from taskyard_common.embedded import free_port
from taskyard_common.nats_util import read_subject
from taskyard_common.settings import NatsSettings
from taskyard_common.synced_nats import SyncedNats
from taskyard_common.topology import Topology

from .conftest import create_key
from .crash_node import on_disk, sqlite_checkpoint
from .invariants import FINAL, query
from .stack import Stack, run_async, wait_until

# Jobs parked at a checkpoint; two thirds of them are decided before the crash.
PARKED = int(os.environ.get("TASKYARD_CRASH_CHECKPOINTS", "48"))
FAST = {
    "TASKYARD_API_RECONCILE_INTERVAL_S": "0.5",
    "TASKYARD_API_RECONCILE_MIN_AGE_S": "2",
    "TASKYARD_API_OUTBOX_GRACE_S": "0.5",
    "TASKYARD_API_OUTBOX_INTERVAL_S": "0.5",
}
FLAVOURS = ("approve", "reject_return", "answer", "reject_fail")


def _spec(n: int, log: Path) -> dict:
    payload: dict = {"log": str(log)}
    flavour = FLAVOURS[n % len(FLAVOURS)]
    if flavour == "answer":
        payload["question"] = True
    if flavour == "reject_fail":
        payload["on_reject"] = "fail"
    return {"type": "checkpoint_probe", "payload": payload, "labels": {"flavour": flavour}}


def _decide(c: httpx.Client, ck_id: str, flavour: str) -> httpx.Response:
    if flavour == "approve":
        return c.post(f"/api/v1/checkpoints/{ck_id}/approve", json={"reason": "ok"})
    if flavour == "answer":
        return c.post(f"/api/v1/checkpoints/{ck_id}/answer", json={"answer": "us-east"})
    return c.post(f"/api/v1/checkpoints/{ck_id}/reject", json={"reason": f"not {ck_id}"})


def _ended_as_decided(job: dict, ck_id: str, flavour: str) -> bool:
    if flavour == "reject_fail":
        return job["status"] == "failed" and f"not {ck_id}" in (job["error"] or {}).get("message", "")
    expected = {
        "approve": {"status": "approved", "reason": "ok"},
        "reject_return": {"status": "rejected", "reason": f"not {ck_id}"},
        "answer": {"status": "answered", "answer": "us-east"},
    }[flavour]
    return job["status"] == "succeeded" and job["result"] == expected


def _passes(log: Path, crash_at: float) -> tuple[Counter, Counter]:
    """Runs that got past their checkpoint, per job, before and after the crash."""
    before, after = Counter(), Counter()
    for line in log.read_text().splitlines():
        kind, job_id, at, _ = line.split()
        if kind == "passed":
            (before if float(at) < crash_at else after)[job_id] += 1
    return before, after


def _lost_decisions(url: str, prefix: str, decided: dict[str, str]) -> set[str]:
    """The jobs (of job id → checkpoint id) whose `decided` event is not in their journal."""

    async def go() -> set[str]:
        topo = Topology(NatsSettings(prefix=prefix))
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for _ in range(100):  # JetStream recovers its streams after the restart
                try:
                    await js.stream_info(topo.events_stream)
                    break
                except NotFoundError:
                    return set(decided)  # the stream itself was lost
                except NatsError:
                    await asyncio.sleep(0.1)
            lost = set()
            for job_id, ck_id in decided.items():
                stored = await read_subject(nc, topo.events_stream, topo.event_subject(job_id))
                events = [json.loads(m.data) for m in stored]
                if not any(
                    e["type"] == "decided" and e["data"].get("checkpoint_id") == ck_id for e in events
                ):
                    lost.add(job_id)
            return lost
        finally:
            await nc.close()

    return run_async(go())


def _data(value) -> dict:
    return json.loads(value) if isinstance(value, str) else value


@pytest.mark.parametrize("sync_interval", [None, "always"], ids=["sync-default", "sync-always"])
def test_no_decision_is_lost_in_a_machine_crash(lazy_disk, db_url, tmp_path, sync_interval):
    if not db_url.startswith("sqlite") and sync_interval == "always":
        pytest.skip("PostgreSQL is not on the crashing disk: the SQLite case covers it")
    started = time.monotonic()
    url = on_disk(db_url, lazy_disk.mountpoint)
    nats_server = SyncedNats(
        lazy_disk.mountpoint / "nats",
        free_port(),
        free_port(),
        tmp_path / "nats.log",
        sync_interval=sync_interval,
    ).start()
    stack = Stack(nats=nats_server, db_url=url, tmp=tmp_path)
    stack.extra_env.update(FAST, TASKYARD_DB_SQLITE_SYNCHRONOUS="FULL")
    passes_log = tmp_path / "passes.log"
    passes_log.touch()
    try:
        stack.admin_key = create_key(url, "admin", "admin")
        if url.startswith("sqlite"):
            sqlite_checkpoint(url)
        stack.start_api()
        stack.start_executor(handlers="handlers_for_tests", slots=16)
        with stack.http() as c:
            r = c.post("/api/v1/jobs:batch", json={"jobs": [_spec(n, passes_log) for n in range(PARKED)]})
            assert r.status_code == 201, r.text
            flavour_of = {
                job["id"]: _spec(n, passes_log)["labels"]["flavour"] for n, job in enumerate(r.json()["jobs"])
            }

        def all_parked() -> dict[str, str] | None:
            rows = query(url, "SELECT job_id, id FROM checkpoints WHERE status = 'pending'")
            return dict(rows) if len(rows) == PARKED else None

        ck_of = wait_until(all_parked, timeout=60, what="every job parked at its checkpoint")
        jobs = sorted(ck_of)
        to_decide, left_waiting = jobs[: 2 * PARKED // 3], jobs[2 * PARKED // 3 :]

        # Decide two thirds at once, and crash the machine while the last calls are in flight.
        answers: dict[str, int | str] = {}

        def decide(job_id: str) -> None:
            try:
                with stack.http() as c:
                    answers[job_id] = _decide(c, ck_of[job_id], flavour_of[job_id]).status_code
            except httpx.HTTPError as exc:
                answers[job_id] = type(exc).__name__  # no answer: the machine went down

        pool = ThreadPoolExecutor(8)
        for job_id in to_decide:
            pool.submit(decide, job_id)
        wait_until(
            lambda: len(answers) >= 3 * len(to_decide) // 4, timeout=30, what="most decisions answered"
        )
        for svc in reversed(stack.services):
            svc.kill9()
        crash_at = time.time()
        nats_server.kill()
        lazy_disk.crash()
        pool.shutdown(wait=True)

        nats_server.start()
        decided_in_db = dict(query(url, "SELECT job_id, id FROM checkpoints WHERE status != 'pending'"))
        lost = _lost_decisions(nats_server.url, stack.prefix, decided_in_db)
        # A decision is still needed where its job has not ended (a rejection that fails the job
        # ends it at once; a continuation may have ended before the crash).
        unfinished = {i for i, s in query(url, "SELECT id, status FROM jobs") if s not in FINAL}
        needed = lost & unfinished
        stack.start_api()
        stack.start_executor(handlers="handlers_for_tests", slots=16)

        ok = {j for j, a in answers.items() if isinstance(a, int) and 200 <= a < 300}
        assert all(isinstance(a, str) or a < 300 or a >= 500 for a in answers.values()), answers
        unanswered = [j for j in to_decide if j not in ok]
        applied, retried = 0, 0
        with stack.http() as c:
            for job_id in ok:  # the database is the record: every 2xx decision is there
                assert c.get(f"/api/v1/checkpoints/{ck_of[job_id]}").json()["status"] != "pending"
            for job_id in unanswered:
                ck = c.get(f"/api/v1/checkpoints/{ck_of[job_id]}").json()
                if ck["status"] == "pending":  # visibly not applied: the client tries again
                    assert _decide(c, ck_of[job_id], flavour_of[job_id]).status_code == 200
                    retried += 1
                else:
                    applied += 1

            def ended(ids: list[str]) -> dict[str, dict] | None:
                now = {i: c.get(f"/api/v1/jobs/{i}").json() for i in ids}
                return now if all(j["status"] in FINAL for j in now.values()) else None

            try:
                finals = wait_until(lambda: ended(to_decide), timeout=60, what="every decided job final")
            except TimeoutError:
                states = Counter(c.get(f"/api/v1/jobs/{i}").json()["status"] for i in to_decide)
                raise AssertionError(f"decided jobs not final after the crash: {dict(states)}") from None
            wrong = [i for i in to_decide if not _ended_as_decided(finals[i], ck_of[i], flavour_of[i])]
            assert not wrong, [(finals[i]["status"], finals[i]["result"], finals[i]["error"]) for i in wrong]

            # Nobody decided these: still waiting at the same checkpoint, and it can be decided.
            for job_id in left_waiting:
                job = c.get(f"/api/v1/jobs/{job_id}").json()
                assert job["status"] == "waiting", job["status"]
                assert c.get(f"/api/v1/checkpoints/{ck_of[job_id]}").json()["status"] == "pending"
                assert _decide(c, ck_of[job_id], flavour_of[job_id]).status_code == 200
            finals = wait_until(
                lambda: ended(left_waiting), timeout=60, what="the late decisions' jobs final"
            )
            wrong = [i for i in left_waiting if not _ended_as_decided(finals[i], ck_of[i], flavour_of[i])]
            assert not wrong, [(finals[i]["status"], finals[i]["result"]) for i in wrong]

        before, after = _passes(passes_log, crash_at)
        actions = Counter(
            _data(d)["action"] for (d,) in query(url, "SELECT data FROM job_events WHERE type = 'reconciled'")
        )
        outcomes = Counter(
            job_id
            for (job_id,) in query(
                url,
                "SELECT job_id FROM job_events WHERE type IN ('succeeded', 'failed') AND stream_seq IS NOT NULL",
            )
        )
        duplicate_runs = query(url, "SELECT COUNT(*) FROM job_events WHERE type = 'duplicate_run'")[0][0]
        parked_again = sum(
            n - 1
            for (_, n) in query(
                url, "SELECT job_id, COUNT(*) FROM job_events WHERE type = 'waiting' GROUP BY job_id"
            )
            if n > 1
        )
        print(
            f"\ncheckpoints in a machine crash (sync_interval={sync_interval or 'default (2 min)'}, "
            f"{'SQLite FULL' if url.startswith('sqlite') else 'PostgreSQL'}): {PARKED} parked, "
            f"{len(to_decide)} decided just before the crash ({len(ok)} answered 2xx, {len(unanswered)} no "
            f"answer: {applied} applied, {retried} still pending and decided again), {len(left_waiting)} "
            f"left waiting; decisions in the database {len(decided_in_db)}, missing from the journals after "
            f"the crash {len(lost)} ({len(lost & ok)} answered 2xx: lost by the stream; "
            f"{len(lost - ok)} no answer: never sent or lost), {len(needed)} of them needed by a job not "
            f"ended; "
            f"reconciler: decision republished {actions['decision_republished']}, resumed "
            f"{actions['resumed']}, republished {actions['republished']}, requeued {actions['requeued']}; "
            f"parked again {parked_again}; passed the checkpoint again after the crash (outcome lost) "
            f"{sum(1 for i in after if before[i])}; duplicate_run rows {duplicate_runs}; ended twice "
            f"{sum(1 for n in outcomes.values() if n > 1)}; run time {time.monotonic() - started:.1f} s"
        )
        assert not [i for i, n in after.items() if n > 1], (
            "a job got past its checkpoint twice after the restart"
        )
        assert not [i for i, n in outcomes.items() if n > 1], "a job ended twice"
        assert duplicate_runs == 0
        assert not [i for i in jobs if flavour_of[i] == "reject_fail" and before[i] + after[i]], (
            "a job ran past a rejection"
        )
        if sync_interval == "always":
            # The stream lost nothing it had acknowledged: what is missing was never sent (the api
            # died between its commit and its publish, before answering), and only that is sent.
            assert not lost & ok, "the stream lost a decision it had acknowledged"
            assert actions["decision_republished"] == len(needed), actions
            # A decision never sent left its job's continuation unsent too when the api died
            # between the two: that job, and only such a job, is resumed.
            resumed = {
                job_id
                for job_id, data in query(
                    url, "SELECT job_id, data FROM job_events WHERE type = 'reconciled'"
                )
                if _data(data)["action"] == "resumed"
            }
            assert resumed <= needed, (resumed, needed)
            assert actions["republished"] == actions["requeued"] == 0, actions
        else:
            assert lost & ok, "the crash lost no answered decision: not a test"
            # Only a decision a job still waits for is sent again: when every decided job's outcome
            # reached the database before the crash, none is (seen on PostgreSQL under load).
            assert actions["decision_republished"] == len(needed), actions
    finally:
        for svc in stack.services:
            if svc.alive():
                svc.kill9()
        nats_server.kill()
