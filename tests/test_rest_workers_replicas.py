"""REST workers behind several api replicas: a lease claimed on one api process is served by any
other (the call is forwarded to the process holding it, lease_relay.py), with the same answers,
and a lease whose api process died is answered at once; a worker's claims all go to the one
process serving it, whichever replica they reach (real nats-server, PostgreSQL, two apis)."""

import asyncio
import contextlib
import re
import secrets
import threading
import time
from datetime import datetime

import httpx
import nats
import pytest

from taskyard_api.auth import Principal
from taskyard_api.failures import NotFound, Refused, TooLarge
from taskyard_api.lease_relay import RECHECK_S, Answer, Forwarded, LeaseRelay
from taskyard_api.leases import Elsewhere, LeaseService
from taskyard_api.routes_leases import CALLS
from taskyard_common.schemas import Heartbeat
from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology, ensure_queue, ensure_streams

from .conftest import create_key
from .stack import run_async, wait_until
from .test_rest_workers import claim, rest_worker, submit

LEASE_ID = re.compile(r"^ls_[0-9a-f]{8}_[A-Za-z0-9_-]+$")


def _needs_postgresql(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several api processes share PostgreSQL (SQLite is the one-process default)")


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=90)


def timeline(c: httpx.Client, job_id: str, until) -> list[str]:
    """The job's timeline types once `until` holds of them (or as they are after 10 s)."""
    kinds: list[str] = []

    def complete() -> bool:
        nonlocal kinds
        kinds = [e["type"] for e in c.get(f"/api/v1/jobs/{job_id}").json()["timeline"]]
        return bool(until(kinds))

    with contextlib.suppress(TimeoutError):
        wait_until(complete, 10, "the timeline")
    return kinds


def test_a_lease_claimed_on_one_api_is_heartbeated_logged_asked_and_completed_on_another(stack, db_url):
    _needs_postgresql(db_url)
    api_a, api_b = stack.start_api(), stack.start_api()
    other = create_key(db_url, "mallory", "submitter")
    with (
        _client(api_a.url, stack.admin_key) as a,
        _client(api_b.url, stack.admin_key) as b,
        _client(api_a.url, other) as ma,
        _client(api_b.url, other) as mb,
    ):
        assert claim(a, "rr", create=True, wait_s=0)[0] == 204
        job = submit(a, {"n": 1}, "rr")
        code, got = claim(a, "rr", wait_s=5)
        assert code == 200 and got["job"]["id"] == job["id"], got
        lease = got["lease"]["id"]
        assert LEASE_ID.match(lease), lease
        owner = lease[3:11]

        # Heartbeat and log on B: run by A, which holds the lease.
        r = b.post(f"/api/v1/leases/{lease}/heartbeat", json={"pct": 30, "message": "a third"})
        assert r.status_code == 200, r.text
        assert r.json()["lease"]["id"] == lease and r.json()["lease"]["state"] == "active"
        assert r.json()["lease"]["worker_id"] == "rest-admin-py"
        wait_until(
            lambda: (b.get(f"/api/v1/jobs/{job['id']}").json()["progress"] or {}).get("message") == "a third",
            10,
            "the progress sent through B",
        )
        r = b.post(f"/api/v1/leases/{lease}/log", json={"lines": ["one via b", "two via b"]})
        assert (r.status_code, r.json()) == (200, {"stored": 2}), r.text
        assert b.post(f"/api/v1/leases/{lease}/heartbeat").status_code == 200  # no body: as locally
        # What the forwarding costs a call: heartbeats (no progress event) on A and through B.
        took = {}
        for name, c in [("local", a), ("forwarded", b)]:
            times = []
            for _ in range(50):
                started = time.perf_counter()
                assert c.post(f"/api/v1/leases/{lease}/heartbeat").status_code == 200
                times.append(time.perf_counter() - started)
            took[name] = sorted(times)[len(times) // 2] * 1000
        print(f"heartbeat median: local {took['local']:.2f} ms, forwarded {took['forwarded']:.2f} ms")

        # Another key: the same refusal on B as on A, and nothing changes.
        for action, body in [("heartbeat", {}), ("complete", {"result": 1}), ("log", {"lines": ["x"]})]:
            on_a = ma.post(f"/api/v1/leases/{lease}/{action}", json=body)
            on_b = mb.post(f"/api/v1/leases/{lease}/{action}", json=body)
            assert on_a.status_code == on_b.status_code == 403, (on_a.text, on_b.text)
            assert on_a.json() == on_b.json() and "another API key" in on_b.json()["detail"]
        # Unknown leases on B: never issued; issued by A (its id) but unknown there; issued by an
        # api process that does not exist. Each a 404 naming the lease.
        for unknown in ["ls_unknown", f"ls_{owner}_nosuchlease", "ls_0badf00d_nosuchlease"]:
            r = b.post(f"/api/v1/leases/{unknown}/heartbeat")
            assert r.status_code == 404 and unknown in r.json()["detail"], r.text
        on_a = a.post(f"/api/v1/leases/ls_{owner}_nosuchlease/complete", json={})
        on_b = b.post(f"/api/v1/leases/ls_{owner}_nosuchlease/complete", json={})
        assert on_a.status_code == on_b.status_code == 404 and on_a.json() == on_b.json()
        # Validation happens where the call arrives: a 422 naming the field, as on A.
        r = b.post(f"/api/v1/leases/{lease}/fail", json={"error": {}})
        assert r.status_code == 422 and "error.message" in r.json()["detail"], r.text

        # Ask on B: a long-poll forwarded to A, answered on A's side through the inbox.
        question = {"question": "Which region?", "name": "region", "choices": ["eu", "us"], "wait_s": 30}
        box: dict = {}

        def asking() -> None:
            with _client(api_b.url, stack.admin_key) as c:
                r = c.post(f"/api/v1/leases/{lease}/ask", json=question)
                box["answer"], box["at"] = (r.status_code, r.json()), time.monotonic()

        thread = threading.Thread(target=asking)
        thread.start()
        ck: dict = {}

        def asked() -> bool:
            nonlocal ck
            found = a.get("/api/v1/checkpoints", params={"status": "pending", "job_id": job["id"]}).json()
            ck = found["checkpoints"][0] if found["checkpoints"] else {}
            return bool(ck)

        wait_until(asked, 10, "the question asked through B in the inbox")
        assert ck["kind"] == "question" and ck["message"] == "Which region?"
        time.sleep(2)  # B's call keeps waiting (longer than a probe interval)
        assert "answer" not in box
        answered_at = time.monotonic()
        r = a.post(f"/api/v1/checkpoints/{ck['id']}/answer", json={"answer": "eu"})
        assert r.status_code == 200, r.text
        thread.join(40)
        code, answer = box["answer"]
        assert code == 200 and (answer["status"], answer["answer"], answer["by"]) == (
            "answered",
            "eu",
            "admin",
        )
        assert answer["checkpoint_id"] == ck["id"]
        print(f"ask through B answered {box['at'] - answered_at:.2f}s after the answer")
        assert box["at"] - answered_at < 3
        # Asking again on B: answered at once (from the lease's journal on A), no second question.
        started = time.monotonic()
        again = b.post(f"/api/v1/leases/{lease}/ask", json=question).json()
        assert again["status"] == "answered" and time.monotonic() - started < 2

        # Complete on B: succeeded once; a second complete, on either api, is a 409 from A.
        r = b.post(f"/api/v1/leases/{lease}/complete", json={"result": {"region": "eu"}})
        assert r.status_code == 200, r.text
        assert r.json()["outcome"] == "succeeded" and r.json()["lease"]["state"] == "completed"
        for c in (a, b):
            r = c.post(f"/api/v1/leases/{lease}/complete", json={"result": "twice"})
            assert r.status_code == 409 and "completed" in r.json()["detail"], r.text
        done = stack.wait_status(job["id"], "succeeded")
        assert done["result"] == {"region": "eu"} and done["attempt"] == 1
        # Two projectors: the other api may still be committing an earlier event of the job.
        kinds = timeline(b, job["id"], until=lambda k: {"started", "decided", "succeeded"} <= set(k))
        assert kinds.count("started") == 1 and kinds.count("succeeded") == 1, kinds
        assert "decided" in kinds and "worker_lost" not in kinds, kinds
        lines = [x["line"] for x in b.get(f"/api/v1/jobs/{job['id']}/logs").json()["lines"]]
        assert lines == ["one via b", "two via b"]
        thread_msgs = b.get(f"/api/v1/jobs/{job['id']}/messages").json()["messages"]
        assert [(m["author_kind"], m["checkpoint_id"]) for m in thread_msgs] == [
            ("job", ck["id"]),
            ("person", ck["id"]),
        ], thread_msgs
        assert len(a.get("/api/v1/checkpoints", params={"job_id": job["id"]}).json()["checkpoints"]) == 1

        # Fail with retry on B, the claim of the next attempt on B and its complete on A: the
        # forwarding works both ways.
        flaky = submit(a, {"n": 2}, "rr")
        code, got = claim(a, "rr", wait_s=5)
        assert code == 200 and got["job"]["id"] == flaky["id"]
        r = b.post(
            f"/api/v1/leases/{got['lease']['id']}/fail",
            json={"error": {"message": "try again"}, "retry": True, "delay_s": 0.2},
        )
        assert r.status_code == 200, r.text
        assert (r.json()["outcome"], r.json()["delay_s"], r.json()["lease"]["state"]) == (
            "retrying",
            0.2,
            "retrying",
        )
        # Another worker, first seen by B: B serves it (worker `py`'s claims would go to A).
        code, again = claim(b, "rr", wait_s=10, worker="py-b")
        assert code == 200 and again["job"]["id"] == flaky["id"] and again["job"]["attempt"] == 2
        assert again["lease"]["id"][3:11] != owner  # B's own lease
        r = a.post(f"/api/v1/leases/{again['lease']['id']}/complete", json={"result": "second"})
        assert r.status_code == 200, r.text
        done = stack.wait_status(flaky["id"], "succeeded")
        assert done["result"] == "second" and done["attempt"] == 2
        kinds = timeline(b, flaky["id"], until=lambda k: len(k) >= 5)
        assert kinds == ["queued", "started", "retrying", "started", "succeeded"], kinds
    assert api_a.alive() and api_b.alive()


def test_a_lease_whose_api_was_killed_is_a_404_on_another_and_its_job_runs_again(stack, db_url):
    """kill -9 the api holding a lease while another api forwards a long-poll ask to it: the
    forwarded call ends within a probe interval (not at its timeout) with a 404 naming the lease,
    later calls are 404s at once, and the job's delivery comes back after ack_wait to run on a
    Python executor, its lost attempt counted."""
    _needs_postgresql(db_url)
    fast = {"TASKYARD_NATS_ACK_WAIT_S": "3"}
    api_a, api_b = stack.start_api(**fast), stack.start_api(**fast)
    with _client(api_a.url, stack.admin_key) as a, _client(api_b.url, stack.admin_key) as b:
        assert claim(a, "gone", create=True, wait_s=0)[0] == 204
        job = submit(a, {"n": "gone"}, "gone")
        code, got = claim(a, "gone", wait_s=5, lease_s=600)  # only the api's death ends it
        assert code == 200 and got["job"]["id"] == job["id"]
        lease = got["lease"]["id"]
        assert b.post(f"/api/v1/leases/{lease}/heartbeat", json={"pct": 10}).status_code == 200
        box: dict = {}

        def asking() -> None:
            with _client(api_b.url, stack.admin_key) as c:
                r = c.post(f"/api/v1/leases/{lease}/ask", json={"question": "Still there?", "wait_s": 30})
                box["answer"], box["at"] = (r.status_code, r.json()), time.monotonic()

        thread = threading.Thread(target=asking)
        thread.start()
        wait_until(
            lambda: a.get("/api/v1/checkpoints", params={"job_id": job["id"]}).json()["checkpoints"],
            10,
            "the question on A",
        )
        running = stack.wait_status(job["id"], "running")
        assert running["worker_id"] == "rest-admin-py" and running["progress"]["pct"] == 10, running
        time.sleep(0.5)
        api_a.kill9()
        killed, killed_at = time.monotonic(), time.time()
        thread.join(40)
        code, answer = box["answer"]
        waited = box["at"] - killed
        print(f"forwarded ask in flight: answered {waited:.2f}s after the kill: {code} {answer}")
        assert code == 404 and lease in answer["detail"] and "gone" in answer["detail"], answer
        assert waited < 3, waited
        for action, body in [("heartbeat", {}), ("complete", {"result": 1}), ("log", {"lines": ["x"]})]:
            started = time.monotonic()
            r = b.post(f"/api/v1/leases/{lease}/{action}", json=body)
            took = time.monotonic() - started
            assert r.status_code == 404 and lease in r.json()["detail"], r.text
            assert took < 1, (action, took)
        # The delivery A held comes back after ack_wait (3 s) and runs on a Python executor.
        stack.start_executor(queues="gone", handlers="handlers_for_tests", slots=1)
        done = stack.wait_status(job["id"], "succeeded", timeout=60)
        assert done["result"] == {"n": "gone"} and done["attempt"] == 2
        assert not done["worker_id"].startswith("rest-")
        lost = [e for e in done["timeline"] if e["type"] == "worker_lost"]
        assert len(lost) == 1 and lost[0]["attempt"] == 1 and lost[0]["worker_id"] == "rest-admin-py"
        assert [e["type"] for e in done["timeline"]].count("succeeded") == 1
        # Back after ack_wait: A's last in_progress was at most ack_wait/3 (1 s) before the kill.
        second = next(e for e in done["timeline"] if e["type"] == "started" and e["attempt"] == 2)
        back = datetime.fromisoformat(second["at"]).timestamp() - killed_at
        print(f"the job started again {back:.2f}s after the kill (ack_wait 3 s)")
        assert 3 - 1 - 0.5 <= back < 15, back
    assert api_b.alive()


def test_forwarding_to_an_owner_absent_stuck_or_gone_midway_ends_with_a_clear_refusal(nats_server):
    """The forwarding layer against the real nats-server, the owner played by a bare subscriber:
    none at all is a 404 at once (NATS said nobody listens, twice); one back on NATS within that
    recheck (a reconnect) gets the call; one that answers probes but never the call is a 409 at the
    call's timeout; one that leaves while a call waits is a 404 within a probe; a call larger than
    NATS carries is a 413."""

    async def go() -> None:
        topo = Topology(NatsSettings(url=nats_server.url, prefix="t" + secrets.token_hex(4)))
        nc, owner_nc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        loop = asyncio.get_running_loop()
        try:
            relay = LeaseRelay(nc, topo, LeaseService(nc, nc.jetstream(), topo, None, 1024), CALLS)  # type: ignore[arg-type]
            who = Principal("k1", "bob", "submitter")

            def call(owner: str, action: str = "heartbeat", body: dict | None = None) -> Forwarded:
                return Forwarded(action, f"ls_{owner}_x", who, body or {"pct": None, "message": ""})

            started = loop.time()
            with pytest.raises(NotFound, match=r"lease ls_0000aaaa_x not found: .* \(0000aaaa\) is gone"):
                await relay.forward("0000aaaa", call("0000aaaa"), timeout_s=30)
            assert RECHECK_S <= loop.time() - started < 1.0

            async def answering(msg) -> None:
                await msg.respond(Answer(200, msg.data).encode() if msg.data else b"")

            # Nobody listens when the call goes out; the owner is back 0.1 s later, before the recheck.
            loop.call_later(
                0.1,
                lambda: asyncio.ensure_future(
                    owner_nc.subscribe(topo.lease_subject("0000dddd"), cb=answering)
                ),
            )
            back = await relay.forward("0000dddd", call("0000dddd"), timeout_s=5)
            assert (back.status, Forwarded.decode(back.body).target) == (200, "ls_0000dddd_x")

            async def stuck(msg) -> None:
                if not msg.data:  # alive: answers the probes, never the call
                    await msg.respond(b"")

            await owner_nc.subscribe(topo.lease_subject("0000bbbb"), cb=stuck)
            await owner_nc.flush()
            started = loop.time()
            with pytest.raises(Refused, match=r"lease ls_0000bbbb_x: .* did not answer within 2.5s"):
                await relay.forward("0000bbbb", call("0000bbbb"), timeout_s=2.5)
            assert 2.5 <= loop.time() - started < 3.5

            loop.call_later(1.5, lambda: asyncio.ensure_future(owner_nc.close()))
            started = loop.time()
            with pytest.raises(NotFound, match="is gone"):
                await relay.forward("0000bbbb", call("0000bbbb", "ask"), timeout_s=60)
            gone_after = loop.time() - started
            print(f"owner gone 1.5 s into a call: answered {gone_after:.2f}s after the call")
            assert 1.5 <= gone_after < 1.5 + 1.5, gone_after

            big = call("0000cccc", "log", {"lines": ["x" * nc.max_payload], "stream": "log"})
            with pytest.raises(TooLarge, match="larger than NATS carries"):
                await relay.forward("0000cccc", big, timeout_s=5)
        finally:
            await nc.close()
            if not owner_nc.is_closed:
                await owner_nc.close()

    run_async(go())


def test_a_rest_workers_claims_on_two_apis_share_its_slots_and_its_home_is_taken_over(stack, db_url):
    """A worker's claims reach two api processes and both go to the one serving it (its home): its
    slots are counted once, and one heartbeat lists every lease it holds. Before, each api counted
    its own slots (a one-slot worker held a lease on each) and the two heartbeats overwrote each
    other's running jobs. kill -9 of its home: the other api takes the worker over at its next
    claim."""
    _needs_postgresql(db_url)
    fast = {"TASKYARD_NATS_ACK_WAIT_S": "3"}
    api_a, api_b = stack.start_api(**fast), stack.start_api(**fast)
    with _client(api_a.url, stack.admin_key) as a, _client(api_b.url, stack.admin_key) as b:
        assert claim(a, "home", create=True, wait_s=0)[0] == 204  # A serves worker `py` from now on
        jobs = [submit(a, {"n": i}, "home")["id"] for i in range(3)]
        code, first = claim(a, "home", wait_s=5)
        assert code == 200, first
        home = first["lease"]["id"][3:11]

        code, refused = claim(b, "home", wait_s=0)  # its one slot is taken on A
        assert code == 409 and "holds 1 leases" in refused["detail"], refused
        code, second = claim(b, "home", wait_s=5, slots=2)
        assert code == 200 and second["lease"]["id"][3:11] == home, second  # leased by A

        held = sorted([first["job"]["id"], second["job"]["id"]])

        def listed(c: httpx.Client) -> bool:
            w = rest_worker(c, "py")
            return (
                w is not None
                and (w["slots"], w["via"]) == (2, home)
                and sorted(r["id"] for r in w["running"]) == held
            )

        wait_until(lambda: listed(a) and listed(b), 10, "one heartbeat listing both leases")
        reason = b.get(f"/api/v1/jobs/{jobs[2]}").json()["waiting_reason"]
        assert reason["code"] == "all_busy", reason
        assert (reason["evidence"]["slots"], reason["evidence"]["busy"]) == (2, 2), reason

        api_a.kill9()
        code, third = claim(b, "home", wait_s=10, slots=2)  # B finds A gone and serves the worker
        assert code == 200 and third["job"]["id"] == jobs[2], third
        assert third["lease"]["id"][3:11] not in ("", home), third
        # A's two leases died with it: their jobs come back after ack_wait (3 s), to B's claims.
        code, fourth = claim(b, "home", wait_s=15, slots=2)
        assert code == 200 and fourth["job"]["id"] in held and fourth["job"]["attempt"] == 2, fourth
        wait_until(
            lambda: (
                sorted(r["id"] for r in (rest_worker(b, "py") or {}).get("running", []))
                == sorted([third["job"]["id"], fourth["job"]["id"]])
            ),
            10,
            "B's heartbeat listing its two leases",
        )
    assert api_b.alive()


def test_two_api_processes_claiming_for_a_new_worker_at_once_make_one_of_them_its_home(nats_server):
    """The worker's heartbeat is written with the revision its writer last saw, so of two processes
    claiming for a new worker at the same moment one becomes its home and the other is told which
    (Elsewhere); a process finding the home gone takes the worker over, and the old home, writing
    its next heartbeat, lets go of it."""

    async def go() -> None:
        topo = Topology(NatsSettings(url=nats_server.url, prefix="t" + secrets.token_hex(4)))
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await ensure_streams(js, topo)
            await ensure_queue(js, topo, "q")
            kv = await js.key_value(topo.workers_bucket)
            services = [LeaseService(nc, js, topo, None, 1024) for _ in range(2)]  # type: ignore[arg-type]
            who = Principal("k1", "bob", "submitter")

            async def via() -> str | None:
                return Heartbeat.model_validate_json((await kv.get("rest-bob-w")).value or b"").via

            got = await asyncio.gather(
                *(s.claim(who, "q", "w", 1, wait_s=0, lease_s=30) for s in services), return_exceptions=True
            )
            assert sorted(type(r).__name__ for r in got) == ["Elsewhere", "NoneType"], got
            home, other = (services[0], services[1]) if got[0] is None else (services[1], services[0])
            told = next(r for r in got if isinstance(r, Elsewhere))
            assert told.home == home.owner and told.worker_id == "rest-bob-w"
            assert await via() == home.owner
            assert "rest-bob-w" in home.workers and "rest-bob-w" not in other.workers

            with pytest.raises(Elsewhere):  # asked again while its home is there: still told
                await other.claim(who, "q", "w", 1, wait_s=0, lease_s=30)
            other.gone.add(home.owner)  # as lease_relay marks a home nobody answers for
            assert await other.claim(who, "q", "w", 1, wait_s=0, lease_s=30) is None
            assert await via() == other.owner
            await home._beat(home.workers["rest-bob-w"])  # its next heartbeat: not its worker now
            assert "rest-bob-w" not in home.workers and await via() == other.owner
        finally:
            await nc.close()

    run_async(go())
