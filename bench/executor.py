"""One executor alone: CPU per noop job with no api, no database and no metrics service.

The end-to-end run shares two cores between six processes, so an executor change of a few percent
drowns in the noise of the others. Here one nats-server holds N noop job messages published
straight to JOBS (the api's own message: a JobSpec with its Nats-Msg-Id), then one executor
(`python -m taskyard_executor`, as `./taskw up` starts it) drains them; its CPU comes from /proc
from its first job to the last job's ack. Each round uses a fresh executor; the median is printed.

    .venv/bin/python bench/executor.py --jobs 20000 --rounds 3 --slots 64
    .venv/bin/python bench/executor.py --jobs 4000 --sleep-ms 20     # W3 without the api
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

from taskyard_common.embedded import EmbeddedNats, free_port
from taskyard_common.schemas import JobSpec
from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology, ensure_queue, ensure_streams

sys.path.insert(0, str(Path(__file__).parent))
from run import PREFIX, proc_cpu_s  # noqa: E402

QUEUE = "default"


async def publish(url: str, topo: Topology, n: int, round_no: int, sleep_ms: float) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js, topo)
    await ensure_queue(js, topo, QUEUE)
    subject = topo.job_subject(QUEUE, "normal")
    for start in range(0, n, 1000):
        acks = []
        for i in range(start, min(n, start + 1000)):
            kind, payload = ("sleep", {"seconds": sleep_ms / 1000}) if sleep_ms else ("noop", {})
            spec = JobSpec(
                # The round in the id's tail: the message id is that tail (schemas.message_id),
                # and JOBS would drop the next round's jobs as duplicates of this one's.
                id=f"R{i:023d}{round_no:02d}",
                type=kind,
                payload=payload,
                queue=QUEUE,
                submitted_at=time.time(),
            )
            data = spec.model_dump_json().encode()
            acks.append(await js.publish_async(subject, data, headers={"Nats-Msg-Id": spec.msg_id}))
        await asyncio.gather(*acks)
    await nc.close()


async def drained(url: str, topo: Topology, timeout: float) -> None:
    """Until the queue's consumer has nothing pending and nothing unacked."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            infos = await js.consumers_info(topo.jobs_stream)
            if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"not drained after {timeout:.0f} s")
    finally:
        await nc.close()


def one_round(nats_url: str, topo: Topology, args: argparse.Namespace, round_no: int, tmp: Path) -> dict:
    asyncio.run(publish(nats_url, topo, args.jobs, round_no, args.sleep_ms))
    # The earlier rounds' acks are in the ack floor already: this round's executor took a job once
    # the floor passes them (it used to count from at once, start-up included, in rounds 2 on).
    floor = asyncio.run(_ack_floors(nats_url, topo))
    env = {
        "TASKYARD_NATS_URL": nats_url,
        "TASKYARD_NATS_PREFIX": PREFIX,
        "TASKYARD_EXECUTOR_PORT": str(free_port()),
        "PATH": "/usr/bin:/bin",
        **{k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "HOME"))},
    }
    log = open(tmp / f"executor-{round_no}.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskyard_executor", "--queues", QUEUE, "--slots", str(args.slots)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
    )
    try:
        # Its start-up (imports, connecting) is not a job's cost: CPU is read from its first ack on.
        started = time.monotonic()
        cpu0 = None
        while cpu0 is None and time.monotonic() - started < 60:
            if asyncio.run(_acked_any(nats_url, topo, floor)):
                cpu0, t0 = proc_cpu_s(proc.pid), time.perf_counter()
            else:
                time.sleep(0.005)
        if cpu0 is None:
            raise RuntimeError(
                f"the executor took no job in 60 s: {(tmp / f'executor-{round_no}.log').read_text()[-2000:]}"
            )
        asyncio.run(drained(nats_url, topo, timeout=300))
        wall, cpu = time.perf_counter() - t0, (proc_cpu_s(proc.pid) or 0.0) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)
    return {"cpu_ms_per_job": 1000 * cpu / args.jobs, "jobs_per_s": args.jobs / wall}


def ideal(args: argparse.Namespace, rate: float) -> str:
    """For sleep jobs, the share reached of the ideal `slots / sleep` jobs per second."""
    if not args.sleep_ms:
        return ""
    best = args.slots * 1000 / args.sleep_ms
    return f", {rate / best:.3f} of the ideal {best:,.0f}/s"


async def _ack_floors(url: str, topo: Topology) -> dict[str, int]:
    nc = await nats.connect(url)
    try:
        return {
            c.name: c.ack_floor.stream_seq or 0 for c in await nc.jetstream().consumers_info(topo.jobs_stream)
        }
    finally:
        await nc.close()


async def _acked_any(url: str, topo: Topology, floor: dict[str, int]) -> bool:
    """Has an executor taken a job since the ack floors were `floor`?"""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for c in await js.consumers_info(topo.jobs_stream):
            if c.num_ack_pending or (c.ack_floor.stream_seq or 0) > floor.get(c.name, 0):
                return True
        return False
    finally:
        await nc.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--sleep-ms", type=float, default=0, help="`sleep` jobs of this long instead of noop ones")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="taskyard-executor-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = EmbeddedNats(store_dir=tmp / "nats", port=free_port(), monitor_port=free_port())
        server.start()
        topo = Topology(NatsSettings(url=server.url, prefix=PREFIX))
        try:
            rounds = [one_round(server.url, topo, args, i, tmp) for i in range(args.rounds)]
        finally:
            server.stop()
    for r in rounds:
        print(f"round: {r['cpu_ms_per_job']:.4f} ms CPU per job, {r['jobs_per_s']:,.0f} jobs/s")
    cpu = statistics.median(r["cpu_ms_per_job"] for r in rounds)
    rate = statistics.median(r["jobs_per_s"] for r in rounds)
    kind = f"sleep {args.sleep_ms:g} ms" if args.sleep_ms else "noop"
    print(
        f"executor alone, {args.jobs:,} {kind} jobs, {args.slots} slots: median {cpu:.4f} ms CPU per job, {rate:,.0f} jobs/s{ideal(args, rate)}"
    )


if __name__ == "__main__":
    main()
