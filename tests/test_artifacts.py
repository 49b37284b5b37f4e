"""Job files: inputs uploaded and staged, outputs collected and downloaded, limits and safety."""

import hashlib
import os
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from taskyard import Client

from .conftest import create_key
from .stack import run_async
from .test_cli import cli

pytestmark = pytest.mark.one_database(
    "sqlite", why="artifacts live in a JetStream object store; executor-side staging; limits"
)


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def _stream_state(stack):
    import nats

    from taskyard_common.settings import NatsSettings
    from taskyard_common.topology import Topology

    nc = await nats.connect(stack.nats.url)
    try:
        info = await nc.jetstream().stream_info(Topology(NatsSettings(prefix=stack.prefix)).artifacts_stream)
        return info.state
    finally:
        await nc.close()


def test_cli_round_trip_inputs_outputs_download(stack, tmp_path):
    stack.start_api()
    stack.start_executor()
    work = tmp_path / "laptop"
    (work / "images" / "sub").mkdir(parents=True)
    (work / "data.csv").write_text("a,b\n1,2\n")
    (work / "images" / "x.png").write_bytes(os.urandom(3000))
    (work / "images" / "sub" / "y.png").write_bytes(b"y" * 10)
    script = (
        "mkdir -p out/deep && cp data.csv out/copy.csv && ls -R images > out/deep/list.txt && wc -c data.csv"
    )
    os.chdir(work)
    try:
        run = cli(
            stack, "run", "--input", "data.csv", "--input", "images/", "--output", "out/**",
            "--shell", "--", script,
        )  # fmt: skip
    finally:
        os.chdir(stack.tmp)
    assert run.returncode == 0, run.stderr
    assert "data.csv" in run.stdout and "inputs: 3 files" in run.stderr
    job_id = run.stderr.split("job ", 1)[1].split()[0]
    dest = tmp_path / "got"
    down = cli(stack, "download", job_id, "--to", str(dest))
    assert down.returncode == 0, down.stderr
    assert (dest / "out" / "copy.csv").read_text() == "a,b\n1,2\n"
    assert "x.png" in (dest / "out" / "deep" / "list.txt").read_text()
    listing = Client(stack.api.url, stack.admin_key).artifacts(job_id)
    assert {o["name"] for o in listing["outputs"]} == {"out/copy.csv", "out/deep/list.txt"}
    assert {i["path"] for i in listing["inputs"]} == {"data.csv", "images/x.png", "images/sub/y.png"}
    copy = next(o for o in listing["outputs"] if o["name"] == "out/copy.csv")
    assert copy["sha256"] == _sha(work / "data.csv") and copy["size"] == 8
    with stack.http() as c:
        r = c.get(f"/api/v1/jobs/{job_id}/artifacts/out/copy.csv")
        assert r.headers["x-taskyard-sha256"] == copy["sha256"] and r.headers["content-length"] == "8"
        assert c.get(f"/api/v1/jobs/{job_id}/artifacts/out/nope.csv").status_code == 404


def test_hundred_jobs_share_one_stored_input(stack, tmp_path):
    stack.start_api()
    stack.start_executor(slots=8)
    data = tmp_path / "shared.bin"
    data.write_bytes(os.urandom(2 * 1024 * 1024))
    with Client(stack.api.url, stack.admin_key) as ty:
        refs = [ty.upload_input(data) for _ in range(100)]  # the 2nd..100th find it stored
        assert len({r["sha256"] for r in refs}) == 1
        script = f'test "$(sha256sum shared.bin | cut -c1-64)" = {refs[0]["sha256"]}'
        jobs = ty.submit_batch(
            [{"type": "shell", "payload": {"command": script, "shell": True}, "inputs": [refs[0]]}] * 100
        )
        done = [ty.wait(j["id"], timeout=180) for j in jobs]
    assert {j["status"] for j in done} == {"succeeded"}
    state = run_async(_stream_state(stack))
    # One object: its chunks plus one meta message, about one file's bytes.
    assert state.bytes < 2 * data.stat().st_size
    assert state.messages == 2 * 1024 * 1024 // (256 * 1024) + 1


def test_upload_over_the_file_limit_is_413_naming_it_and_stores_nothing(stack, tmp_path):
    stack.start_api(TASKYARD_ARTIFACTS_MAX_FILE_BYTES=str(1 << 20))
    body = os.urandom((1 << 20) + 1)
    sha = hashlib.sha256(body).hexdigest()
    with stack.http() as c:
        declared = c.put(f"/api/v1/inputs/{sha}", content=body)
        # No Content-Length (chunked): the limit is counted as the bytes arrive.
        counted = c.put(f"/api/v1/inputs/{sha}", content=iter([body[:600_000], body[600_000:]]))
        for r in (declared, counted):
            assert r.status_code == 413, r.text
            assert "1048576 bytes" in r.json()["detail"] and "nothing was stored" in r.json()["detail"]
        assert c.get(f"/api/v1/inputs/{sha}").status_code == 404
        wrong = c.put(f"/api/v1/inputs/{'0' * 64}", content=b"hello")
        assert wrong.status_code == 422 and "sha256" in wrong.json()["detail"]
        missing = c.post("/api/v1/jobs", json={"type": "noop", "inputs": [{"path": "a", "sha256": sha}]})
        assert missing.status_code == 422 and "inputs[0].sha256" in missing.json()["detail"]
    assert run_async(_stream_state(stack)).messages == 0


def test_unsafe_output_names_are_refused_and_nothing_outside_is_read(stack, tmp_path):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    with stack.http() as c:
        for bad in ("../etc/passwd", "/etc/passwd", "out/../../x"):
            r = c.post("/api/v1/jobs", json={"type": "noop", "outputs": [bad]})
            assert r.status_code == 422 and "outputs[0]" in r.json()["detail"], r.text
        assert (
            "'..' is not allowed"
            in c.post("/api/v1/jobs", json={"type": "noop", "outputs": ["../etc/passwd"]}).text
        )
        assert "absolute" in c.post("/api/v1/jobs", json={"type": "noop", "outputs": ["/etc/passwd"]}).text
        secret = tmp_path / "secret.txt"
        secret.write_text("not yours")
        script = (
            f"mkdir -p out/dir && echo ok > out/ok.txt && ln -s {secret} out/leak.txt "
            f"&& ln -s {tmp_path} out/outside && ln -s ok.txt out/inside.txt && mkfifo out/pipe"
        )
        job = c.post(
            "/api/v1/jobs",
            json={"type": "shell", "payload": {"command": script, "shell": True}, "outputs": ["out/**"]},
        ).json()
        done = stack.wait_status(job["id"], {"succeeded", "failed", "dead"})
        assert done["status"] == "succeeded", done
        outcome = next(e for e in done["timeline"] if e["type"] == "succeeded")["data"]
        assert {a["name"] for a in outcome["artifacts"]} == {"out/ok.txt", "out/inside.txt"}
        errors = "\n".join(outcome["artifact_errors"])
        assert "out/leak.txt" in errors and "leaves the working directory" in errors
        assert "out/outside" in errors and "out/pipe" in errors and "not a regular file" in errors
        listing = c.get(f"/api/v1/jobs/{job['id']}/artifacts").json()
        assert {o["name"] for o in listing["outputs"]} == {"out/ok.txt", "out/inside.txt"}
        # A handler naming its artifact with `..` fails with the rule in the message.
        bad = c.post("/api/v1/jobs", json={"type": "tests.save_artifact", "payload": {"name": "../x"}}).json()
        failed = stack.wait_status(bad["id"], {"failed", "dead", "succeeded"})
        assert failed["status"] in ("failed", "dead") and "'..' is not allowed" in failed["error"]["message"]
        good = c.post(
            "/api/v1/jobs", json={"type": "tests.save_artifact", "payload": {"name": "r/x.bin"}}
        ).json()
        assert stack.wait_status(good["id"], {"succeeded", "failed", "dead"})["status"] == "succeeded"
        assert c.get(f"/api/v1/jobs/{good['id']}/artifacts/r/x.bin").content == b"saved by handler"


class _RssWatch:
    """Peak resident memory of some processes, sampled every 50 ms in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, proc in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], proc.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.05)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {name: round(rss / 2**20, 1) for name, rss in self.peak.items()}


@pytest.mark.serial  # 1 GiB through every service within pytest's 180 s: run alone
@pytest.mark.slow
def test_one_gigabyte_round_trips_under_150_mb_per_service(own_nats_stack, tmp_path):
    stack = own_nats_stack
    stack.extra_env["TASKYARD_ARTIFACTS_BUCKET_MAX_BYTES"] = str(3 << 30)
    stack.start_api()
    stack.start_executor(slots=1)
    size = 1 << 30
    assert psutil.disk_usage(str(tmp_path)).free > 6 * size, "needs ~5 GiB free (file, store, copy, download)"
    data = tmp_path / "big.bin"
    with open(data, "wb") as out:
        for _ in range(size // (16 << 20)):
            out.write(os.urandom(16 << 20))
    want = _sha(data)
    # Every process of the stack, the embedded nats-server (which holds the Object Store) included.
    watch = _RssWatch(
        {"nats-server": stack.nats.process.pid} | {svc.name: svc.process.pid for svc in stack.services}
    )
    try:
        with Client(stack.api.url, stack.admin_key, timeout=120) as ty:
            ref = ty.upload_input(data)
            job = ty.submit(
                "shell", {"command": "mkdir out && cp big.bin out/big.bin", "shell": True},
                inputs=[ref], outputs=["out/**"], timeout_s=600,
            )  # fmt: skip
            final = ty.wait(job["id"], timeout=600)
            assert final["status"] == "succeeded", final
            got = ty.download(job["id"], "out/big.bin", tmp_path / "down")
    finally:
        peaks = watch.stop()
    print("peak RSS MiB:", peaks)
    assert _sha(got) == want and got.stat().st_size == size
    assert all(mib < 150 for mib in peaks.values()), peaks
    data.unlink()
    got.unlink()


def test_roles_viewer_downloads_submitter_uploads(stack, db_url):
    """The documented rule: uploading needs `submitter`; listing and downloading need `viewer`."""
    stack.start_api()
    stack.start_executor()
    viewer = create_key(db_url, "v", "viewer")
    body = b"role test"
    sha = hashlib.sha256(body).hexdigest()
    with stack.http(viewer) as v, stack.http() as admin:
        assert v.put(f"/api/v1/inputs/{sha}", content=body).status_code == 403
        assert admin.put(f"/api/v1/inputs/{sha}", content=body).status_code == 201
        assert admin.put(f"/api/v1/inputs/{sha}", content=body).status_code == 200  # stored before
        job = admin.post(
            "/api/v1/jobs",
            json={
                "type": "shell",
                "payload": {"command": "mkdir o && cp in.txt o/", "shell": True},
                "inputs": [{"path": "in.txt", "sha256": sha}],
                "outputs": ["o/*"],
            },
        ).json()
        assert job["inputs"] == [{"path": "in.txt", "sha256": sha, "size": len(body)}]
        assert stack.wait_status(job["id"], {"succeeded", "failed", "dead"})["status"] == "succeeded"
        assert [o["name"] for o in v.get(f"/api/v1/jobs/{job['id']}/artifacts").json()["outputs"]] == [
            "o/in.txt"
        ]
        assert v.get(f"/api/v1/jobs/{job['id']}/artifacts/o/in.txt").content == body
        anonymous = httpx.get(f"{stack.api.url}/api/v1/jobs/{job['id']}/artifacts/o/in.txt")
        assert anonymous.status_code == 401


def test_job_page_links_download_outputs(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    ui = stack.start_ui()
    with stack.http() as c:
        job = c.post(
            "/api/v1/jobs", json={"type": "tests.save_artifact", "payload": {"name": "r/x.bin"}}
        ).json()
    assert stack.wait_status(job["id"], {"succeeded", "failed", "dead"})["status"] == "succeeded"
    from taskyard_ui.web import COOKIE

    with httpx.Client(base_url=ui.url, cookies={COOKIE: stack.admin_key}, timeout=30) as browser:
        page = browser.get(f"/jobs/{job['id']}").text
        link = f"/jobs/{job['id']}/files/r/x.bin"
        assert f'href="{link}"' in page
        got = browser.get(link)
        assert got.status_code == 200 and got.content == b"saved by handler"
        assert got.headers["x-taskyard-sha256"] == hashlib.sha256(b"saved by handler").hexdigest()
        assert browser.get(f"/jobs/{job['id']}/files/r/none.bin").status_code == 404
