"""A PostgreSQL server of one test's own, which the test may crash and start again.

It runs Debian's binaries as the `postgres` user (initdb refuses root) in a fresh data directory
on a loopback port. `crash()` is `pg_ctl stop -m immediate`: the postmaster and every backend quit
at once, without a checkpoint, so the next start replays the WAL, as after a power cut (commits
were fsynced: `fsync` stays on).
"""

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path


def _bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class OwnPostgres:
    def __init__(self, port: int) -> None:
        self.port = port
        self.bin = _bin_dir()
        self.data = Path(tempfile.mkdtemp(prefix="ty-pg-"))
        self.crashes = 0

    @staticmethod
    def missing() -> str:
        """Why this machine cannot run one ("" when it can)."""
        if _bin_dir() is None:
            return "no PostgreSQL server binaries under /usr/lib/postgresql"
        if os.geteuid() != 0 or shutil.which("runuser") is None:
            return "needs root and runuser to start PostgreSQL as the postgres user"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no postgres user"
        return ""

    def _run(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120
        )

    def init(self) -> "OwnPostgres":
        user = pwd.getpwnam("postgres")
        os.chown(self.data, user.pw_uid, user.pw_gid)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        return self

    def start(self) -> "OwnPostgres":
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=on"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.data / "server.log"),
            "-w",
            "-o",
            options,
            "start",
        )
        return self

    def crash(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        self.crashes += 1

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.data, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def log(self) -> str:
        path = self.data / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""
