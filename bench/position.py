"""Queue-position query latency with 100,000 jobs queued (a figure, not a test).

Fills a real nats-server's JOBS stream through the Taskyard topology (three priorities of one
queue, some cancelled out of the middle), then times the API's position computation
(`QueueState.position`: the consumer info of its priority and the higher ones, read per call, and
one Direct Get, all at once) for random queued jobs, and checks a sample against a brute-force
count. Baselines in the same run, interleaved with the position queries so a busy machine weighs
on all alike: a bare JetStream consumer-info request, and a bare Direct Get (what a position cost
when consumer info was cached). Writes bench/results/position-<time>.json.
"""

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import nats

from taskyard_api.queue_state import QueueState
from taskyard_common.embedded import EmbeddedCluster, EmbeddedNats, free_port
from taskyard_common.nats_util import server_urls
from taskyard_common.settings import NatsSettings
from taskyard_common.topology import PRIORITIES, Topology, ensure_queue, ensure_streams

RESULTS = Path(__file__).parent / "results"


def pct(samples: list[float], q: float) -> float:
    return round(statistics.quantiles(samples, n=100)[q - 1], 3) if len(samples) > 2 else samples[0]


async def fill(js, topo: Topology, n: int) -> list[tuple[int, str]]:
    rng = random.Random(1)
    seqs: list[tuple[int, str]] = []
    body = b'{"id": "x", "type": "noop"}' + b" " * 200
    for start in range(0, n, 5000):
        futures, prios = [], []
        for _ in range(min(5000, n - start)):
            prio = rng.choices(PRIORITIES, weights=(1, 6, 3))[0]
            prios.append(prio)
            futures.append(await js.publish_async(topo.job_subject("default", prio), body))
        acks = await asyncio.gather(*futures)
        seqs += [(ack.seq, prio) for ack, prio in zip(acks, prios, strict=True)]
    return seqs


async def main(n: int, queries: int, cluster: bool = False) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="taskyard-position-"))
    server = (
        EmbeddedCluster.local(tmp / "nats", log_dir=tmp)
        if cluster
        else EmbeddedNats(tmp / "nats", free_port(), free_port(), tmp / "nats.log")
    ).start()
    try:
        topo = Topology(NatsSettings(url=server.url, prefix="bench", replicas=3 if cluster else 1))
        nc = await nats.connect(server_urls(server.url))
        js = nc.jetstream(timeout=30)
        await ensure_streams(js, topo)
        await ensure_queue(js, topo, "default")
        t0 = time.perf_counter()
        seqs = await fill(js, topo, n)
        fill_s = time.perf_counter() - t0
        rng = random.Random(2)
        cancelled = set(rng.sample([s for s, _ in seqs], n // 100))  # 1% cancelled: gaps in the stream
        for seq in cancelled:
            await js.delete_msg(topo.jobs_stream, seq)
        queued = [(s, p) for s, p in seqs if s not in cancelled]
        state = QueueState(nc, js, topo)
        await state.snapshot()

        # Exactness on a sample: brute force = higher priorities' jobs + older jobs of its own.
        by_prio = {p: sorted(s for s, q in queued if q == p) for p in PRIORITIES}
        for seq, prio in rng.sample(queued, 50):
            higher = sum(len(by_prio[p]) for p in PRIORITIES[: PRIORITIES.index(prio)])
            own = by_prio[prio].index(seq)
            got = await state.position("default", prio, seq)
            assert got.position == higher + own, (seq, prio, got, higher + own)

        latencies, baseline, direct = [], [], []
        for seq, prio in rng.sample(queued, queries):
            t = time.perf_counter()
            await state.position("default", prio, seq)
            latencies.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await js.consumer_info(topo.jobs_stream, topo.exec_durable("default", "normal"))
            baseline.append((time.perf_counter() - t) * 1000)
            body = json.dumps({"seq": seq, "next_by_subj": topo.job_subject("default", prio), "batch": 1})
            t = time.perf_counter()
            await nc.request(f"$JS.API.DIRECT.GET.{topo.jobs_stream}", body.encode(), timeout=5)
            direct.append((time.perf_counter() - t) * 1000)
        await nc.close()
    finally:
        server.stop()
    p = {"p50": pct(latencies, 50), "p99": pct(latencies, 99), "max": round(max(latencies), 3)}
    b = {"p50": pct(baseline, 50), "p99": pct(baseline, 99)}
    d = {"p50": pct(direct, 50), "p99": pct(direct, 99)}
    return {
        "nats": "3-node cluster, replicas 3" if cluster else "one server",
        "queued": len(queued),
        "cancelled_gaps": len(cancelled),
        "fill_jobs_per_s": round(n / fill_s),
        "exact_on_sample": 50,
        "position_ms": p,
        "consumer_info_ms": b,
        "direct_get_ms": d,
        "ratio_p50": round(p["p50"] / b["p50"], 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument(
        "--cluster", action="store_true", help="a local 3-node cluster, streams at replicas 3"
    )
    args = parser.parse_args()
    result = asyncio.run(main(args.jobs, args.queries, args.cluster))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"position-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2))
    print(
        f"queue position with {result['queued']:,} queued ({result['cancelled_gaps']:,} cancelled gaps), {result['nats']}"
    )
    print(f"  position query  p50 {result['position_ms']['p50']} ms  p99 {result['position_ms']['p99']} ms")
    print(
        f"  consumer info   p50 {result['consumer_info_ms']['p50']} ms  p99 {result['consumer_info_ms']['p99']} ms (baseline)"
    )
    print(
        f"  direct get      p50 {result['direct_get_ms']['p50']} ms  p99 {result['direct_get_ms']['p99']} ms"
    )
    print(
        f"  ratio p50 {result['ratio_p50']}x; exact against brute force on {result['exact_on_sample']} samples"
    )
    print(f"  -> {out}")
