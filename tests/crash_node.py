"""A machine that can crash, for tests: a LazyFS mount (tests/lazyfs.py); nats-server's store
lives on it (taskyard_common.synced_nats.SyncedNats sets its `sync_interval`).

A machine crash is: SIGKILL every process of the node (the test's services, nats-server), then
SIGKILL the FUSE process, whose memory is the node's page cache (every write not fsynced is gone),
then mount the backing directory again.
"""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

LAZYFS = Path(__file__).with_name("lazyfs.py")


class MountFailed(RuntimeError):
    pass


@dataclass
class LazyMount:
    backing: Path
    mountpoint: Path
    log: Path
    process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "LazyMount":
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, str(LAZYFS), str(self.backing), str(self.mountpoint)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise MountFailed(self.log.read_text(errors="replace").strip()[-2000:] or "no mount")
            time.sleep(0.05)
        return self

    def crash(self) -> None:
        """Drop every write not fsynced (SIGKILL the FUSE process), then mount again."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._unmount()
        self.start()

    def _unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, check=False)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self._unmount()
        self.process = None


@pytest.fixture
def lazy_disk(tmp_path):
    mount = LazyMount(tmp_path / "disk", tmp_path / "mnt", tmp_path / "lazyfs.log")
    try:
        mount.start()
    except (MountFailed, OSError) as exc:
        pytest.skip(f"cannot mount a FUSE filesystem here: {exc}")
    yield mount
    mount.stop()


def on_disk(db_url: str, disk: Path) -> str:
    """The test's database on the lazy disk (SQLite), its admin key and schema synced as if they
    had been there for long; PostgreSQL stays where it is (another machine)."""
    if not db_url.startswith("sqlite"):
        return db_url
    src = Path(db_url.split("///", 1)[1])
    dst = disk / "taskyard.db"
    shutil.copy(src, dst)
    return f"sqlite+aiosqlite:///{dst}"


def sqlite_checkpoint(url: str) -> None:
    """Write SQLite's WAL into the database file and fsync it (what time does on a real node)."""
    conn = sqlite3.connect(url.split("///", 1)[1])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with open(url.split("///", 1)[1], "rb") as f:
        os.fsync(f.fileno())
