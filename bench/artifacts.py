"""Artifact transfer rates through the API against raw nats-py Object Store put/get (a figure, not a test).

Starts a nats-server and the api (SQLite), then, interleaved round by round so a busy machine
weighs on both alike: raw nats-py `ObjectStore.put` from a file and `get` into a file, and the
same bytes through Taskyard: `Client.upload_input` (streamed PUT; the client's sha256 pass is
timed separately) and `Client.download` (streamed GET with the sha256 check). Prints MB/s and
the ratio to raw, writes bench/results/artifacts-<time>.json.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats

from taskyard import Client
from taskyard._files import sha256_of
from taskyard_common.embedded import EmbeddedNats, free_port
from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology

RESULTS = Path(__file__).parent / "results"
PREFIX = "bench"


def env(nats_url: str, db_url: str, **extra: str) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
    out.update(TASKYARD_NATS_URL=nats_url, TASKYARD_NATS_PREFIX=PREFIX, TASKYARD_DB_URL=db_url, **extra)
    return out


def start_stack(tmp: Path, nats_url: str, size: int) -> tuple[list[subprocess.Popen], str, str]:
    db = f"sqlite+aiosqlite:///{tmp}/b.db"
    e = env(nats_url, db, TASKYARD_ARTIFACTS_BUCKET_MAX_BYTES=str(8 * size + (1 << 30)))
    run = [sys.executable, "-m", "taskyard_api"]
    subprocess.run([*run, "migrate"], env=e, check=True, capture_output=True, cwd=tmp)
    made = subprocess.run(
        [*run, "create-key", "bench", "--role", "admin"], env=e, check=True, capture_output=True, cwd=tmp
    )
    key = json.loads(made.stdout)["key"]
    procs, urls = [], []
    for module, args in (("taskyard_api", []), ("taskyard_executor", ["--slots", "1"])):
        port = free_port()
        var = "TASKYARD_API_PORT" if module == "taskyard_api" else "TASKYARD_EXECUTOR_PORT"
        log = open(tmp / f"{module}.log", "wb")  # noqa: SIM115 - the child owns it
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env={**e, var: str(port)},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{url} not ready; logs in {tmp}")
    return procs, urls[0], key


async def raw_round(url: str, src: Path, dst: Path, name: str) -> tuple[float, float]:
    nc = await nats.connect(url)
    try:
        store = await nc.jetstream(timeout=60).object_store(
            Topology(NatsSettings(prefix=PREFIX)).artifacts_bucket
        )
        started = time.perf_counter()
        with open(src, "rb") as f:  # noqa: ASYNC230 - what nats-py users write
            await store.put(name, f)
        put_s = time.perf_counter() - started
        started = time.perf_counter()
        with open(dst, "wb") as f:  # noqa: ASYNC230 - what nats-py users write
            await store.get(name, writeinto=f)
        get_s = time.perf_counter() - started
        await store.delete(name)
        return put_s, get_s
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="file size in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.mib << 20
    with tempfile.TemporaryDirectory(prefix="taskyard-bench-art-") as tmpdir:
        tmp = Path(tmpdir)
        server = EmbeddedNats(tmp / "js", free_port(), free_port(), tmp / "nats.log").start()
        procs, url, key = start_stack(tmp, server.url, size)
        src, dst = tmp / "src.bin", tmp / "dst.bin"
        with open(src, "wb") as out:
            for _ in range(args.mib):
                out.write(os.urandom(1 << 20))
        rows: dict[str, list[float]] = {
            "raw_put": [],
            "raw_get": [],
            "api_upload": [],
            "api_download": [],
            "client_hash": [],
        }
        try:
            with Client(url, key, timeout=300) as ty:
                for n in range(args.rounds):
                    put_s, get_s = asyncio.run(raw_round(server.url, src, dst, f"raw-{n}"))
                    rows["raw_put"].append(put_s)
                    rows["raw_get"].append(get_s)
                    with open(src, "r+b") as f:  # a new sha256 each round: a real upload, not a skip
                        f.write(n.to_bytes(8, "big") + os.urandom(8))
                    started = time.perf_counter()
                    sha256_of(src)
                    rows["client_hash"].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    ref = ty.upload_input(src)
                    # upload_input hashes first: the PUT's own time is the total minus that pass.
                    rows["api_upload"].append(time.perf_counter() - started - rows["client_hash"][-1])
                    # The real path to an output: a job copies the input into out/, the executor stores it.
                    job = ty.submit(
                        "shell", {"command": "mkdir out && cp src.bin out/", "shell": True},
                        inputs=[ref], outputs=["out/*"], timeout_s=600,
                    )  # fmt: skip
                    if ty.wait(job["id"], timeout=600)["status"] != "succeeded":
                        raise RuntimeError(f"bench job failed: {ty.get(job['id'])['error']}")
                    started = time.perf_counter()
                    got = ty.download(job["id"], "out/src.bin", tmp / "down")
                    rows["api_download"].append(time.perf_counter() - started)
                    got.unlink()
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
            server.stop()
    mbps = {k: round(args.mib * 1.048576 / statistics.median(v), 1) for k, v in rows.items()}
    result = {
        "file_mib": args.mib,
        "rounds": args.rounds,
        "mb_per_s": mbps,
        "upload_vs_raw_put": round(mbps["api_upload"] / mbps["raw_put"], 2),
        "download_vs_raw_get": round(mbps["api_download"] / mbps["raw_get"], 2),
        "at": datetime.now(UTC).isoformat(),
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"artifacts-{datetime.now(UTC):%Y%m%dT%H%M%S}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
