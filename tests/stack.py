"""Test helpers: Taskyard services as real processes against a real nats-server and database."""

import asyncio
import concurrent.futures
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from taskyard_common.embedded import EmbeddedCluster, EmbeddedNats, port_is_free
from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("TASKYARD_TEST_DATABASE_URL")

# Ports for the servers tests start. A port the kernel hands out for bind(0) lies in the ephemeral
# range (32768-60999), where every outgoing connection also takes its source port: between
# choosing a port and the service binding it, a client elsewhere could take it ("address already
# in use", seen once in 500 tests). Below that range nothing is handed out unasked; each xdist
# worker (PYTEST_XDIST_WORKER=gwN) has a slice of its own and walks it, so no two servers of the
# run are given the same port while either may still bind it.
_PORTS_FROM, _PORTS_SLICE = 12000, 2000
_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 10
_first_port = _PORTS_FROM + _worker * _PORTS_SLICE
_port_turn = itertools.count(secrets.randbelow(_PORTS_SLICE))  # next() on it is thread-safe


def free_port() -> int:
    """A free port on 127.0.0.1 for a server a test starts, outside the ephemeral range."""
    for _ in range(_PORTS_SLICE):
        port = _first_port + next(_port_turn) % _PORTS_SLICE
        if port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {_first_port}..{_first_port + _PORTS_SLICE - 1}")


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Stack:
    nats: EmbeddedNats | EmbeddedCluster
    db_url: str
    tmp: Path
    prefix: str = field(default_factory=lambda: "t" + secrets.token_hex(4))
    admin_key: str = ""
    services: list[Service] = field(default_factory=list)
    extra_env: dict = field(default_factory=dict)
    _api: Service | None = None

    def env(self, **overrides: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
        env.update(
            TASKYARD_NATS_URL=self.nats.url,
            TASKYARD_NATS_PREFIX=self.prefix,
            TASKYARD_DB_URL=self.db_url,
            TASKYARD_NATS_HEARTBEAT_INTERVAL_S="1",
            # JetStream reserves each stream's max_bytes: 1 GiB per test would exhaust the server.
            TASKYARD_NATS_LOGS_MAX_BYTES=str(32 * 1024 * 1024),
            TASKYARD_ARTIFACTS_BUCKET_MAX_BYTES=str(64 * 1024 * 1024),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT / "tests"),
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def spawn(self, name: str, module: str, args: list[str], port_var: str, **env: str) -> Service:
        port = free_port()
        log = self.tmp / f"{name}-{len(self.services)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=self.env(**{port_var: str(port)}, **env),
            stdout=open(log, "wb"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
        )
        svc = Service(name, proc, port, log)
        self.services.append(svc)
        return svc

    def wait_ready(self, svc: Service, timeout: float = 90) -> Service:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not svc.alive():
                raise RuntimeError(
                    f"{svc.name} exited with {svc.process.returncode}:\n{svc.output()[-3000:]}"
                )
            try:
                r = httpx.get(f"{svc.url}/readyz", timeout=2)
                if r.status_code == 200:
                    return svc
                last = r.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.02)  # every test waits for its services: 0.1 s cost each ~0.05 s on average
        raise TimeoutError(f"{svc.name} not ready after {timeout}s ({last}):\n{svc.output()[-3000:]}")

    def start_api(self, wait: bool = True, **env: str) -> Service:
        svc = self.spawn("api", "taskyard_api", [], "TASKYARD_API_PORT", **env)
        self._api = svc
        return self.wait_ready(svc) if wait else svc

    def start_executor(
        self, queues: str = "default", slots: int = 4, handlers: str = "", wait: bool = True, **env: str
    ) -> Service:
        args = ["--queues", queues, "--slots", str(slots)]
        if handlers:
            args += ["-A", handlers]
        svc = self.spawn("executor", "taskyard_executor", args, "TASKYARD_EXECUTOR_PORT", **env)
        return self.wait_ready(svc) if wait else svc

    def start_ui(self, wait: bool = True, **env: str) -> Service:
        """The web UI against this stack's API (start_api() first)."""
        svc = self.spawn("ui", "taskyard_ui", [], "TASKYARD_UI_PORT", TASKYARD_UI_API_URL=self.api.url, **env)
        return self.wait_ready(svc) if wait else svc

    @property
    def api(self) -> Service:
        assert self._api is not None, "start_api() first"
        return self._api

    def http(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.api.url, headers={"Authorization": f"Bearer {key or self.admin_key}"}, timeout=30
        )

    def wait_status(self, job_id: str, statuses: set[str] | str, timeout: float = 30) -> dict:
        wanted = {statuses} if isinstance(statuses, str) else statuses
        deadline = time.monotonic() + timeout
        job: dict = {}
        with self.http() as c:
            while time.monotonic() < deadline:
                job = c.get(f"/api/v1/jobs/{job_id}").json()
                if job.get("status") in wanted:
                    return job
                time.sleep(0.05)
        raise TimeoutError(f"job {job_id} not in {wanted} after {timeout}s: {json.dumps(job)[:2000]}")

    def stop_all(self) -> None:
        for svc in reversed(self.services):
            if svc.alive():
                svc.process.kill()
                svc.process.wait()
        # A cluster is the test's own (stopped after it); the session server is shared.
        if isinstance(self.nats, EmbeddedNats) and self.nats.process is not None:
            run_async(self._delete_streams())

    async def _delete_streams(self) -> None:
        """Free this test's JetStream storage on the shared session server."""
        import nats
        from nats.errors import Error as NatsError

        nc = await nats.connect(self.nats.url, allow_reconnect=False)
        try:
            js = nc.jetstream()
            topo = Topology(NatsSettings(prefix=self.prefix))
            for name in [cfg.name for cfg in topo.stream_configs()] + [
                topo.workers_stream,
                topo.artifacts_stream,
            ]:
                try:
                    await js.delete_stream(name)
                except NatsError:
                    pass  # never created by this test
        finally:
            await nc.close()


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` on `url`/metrics whose labels include `labels` (0 if
    there are none)."""
    from prometheus_client.parser import text_string_to_metric_families

    body = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def wait_until(check, timeout: float = 30, what: str = "condition"):
    """`check()`'s first truthy result, polling until `timeout` (HTTP errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached in {timeout}s")


def run_async(coro):
    """Run a coroutine from sync test code.

    Playwright's sync API leaves an event loop running in the test thread, where asyncio.run
    refuses to start; then the coroutine runs on a thread of its own.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def pg_admin(sql: str) -> None:
    """Run one statement on the PostgreSQL test server (connected to PG_URL's own database)."""
    import asyncpg

    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def rename_db(name: str, new: str) -> None:
    """Rename a PostgreSQL database, cutting off its clients: takes a test database away and back.

    New connections are refused first, so a client reconnecting in a loop cannot keep it busy;
    the renamed database accepts connections again (under its new name).
    """

    async def go() -> None:
        await pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            for _ in range(100):
                await pg_admin(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                )
                try:
                    await pg_admin(f'ALTER DATABASE "{name}" RENAME TO "{new}"')
                    break
                except Exception:  # noqa: BLE001 - terminated backends still exiting: again
                    await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"could not rename database {name}")
        finally:
            for db in (new, name):  # whichever name it has now
                try:
                    await pg_admin(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
                    break
                except Exception:  # noqa: BLE001 - not under this name
                    continue

    run_async(go())
