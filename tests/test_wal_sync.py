"""sqlite_inline.WalSync: the WAL's fsync off the event loop, shared by the commits before it."""

import asyncio
import os
import sqlite3
import threading

import pytest

from taskyard_api import sqlite_inline
from taskyard_api.sqlite_inline import WalSync


@pytest.fixture
def synced_paths(monkeypatch):
    """The path of every descriptor fsynced, in order (the real fsync still runs)."""
    paths: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(sqlite_inline.os, "fsync", fsync)
    return paths


def _wal_database(tmp_path) -> tuple[str, sqlite3.Connection]:
    path = str(tmp_path / "t.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (a)")
    conn.commit()
    return path, conn


def test_the_wal_is_fsynced_and_a_new_wal_file_gets_its_directory_synced_once(tmp_path, synced_paths):
    path, conn = _wal_database(tmp_path)
    wal = WalSync(path)
    asyncio.run(wal.synced())
    asyncio.run(wal.synced())
    assert synced_paths == [f"{path}-wal", str(tmp_path), f"{path}-wal"]
    conn.close()  # the last connection checkpoints and removes the WAL file
    assert not os.path.exists(f"{path}-wal")
    asyncio.run(wal.synced())  # nothing to sync: its frames are in the database file
    assert len(synced_paths) == 3


def test_callers_that_come_together_share_one_fsync_and_a_later_one_waits_for_the_next(
    tmp_path, synced_paths
):
    path, _conn = _wal_database(tmp_path)
    wal = WalSync(path)
    release = threading.Event()
    real = wal._fsync

    def slow() -> None:
        release.wait(5)
        real()

    wal._fsync = slow  # type: ignore[method-assign]

    async def run() -> None:
        together = [asyncio.create_task(wal.synced()) for _ in range(10)]
        await asyncio.sleep(0.05)  # the first fsync has begun and is held
        later = [asyncio.create_task(wal.synced()) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in together + later)
        release.set()
        await asyncio.wait_for(asyncio.gather(*together, *later), 5)

    asyncio.run(run())
    # One fsync for the ten (plus the new WAL's directory), one begun after the three came.
    assert synced_paths == [f"{path}-wal", str(tmp_path), f"{path}-wal"]


def test_an_fsync_error_reaches_every_caller_that_waited_for_it(tmp_path):
    path, _conn = _wal_database(tmp_path)
    wal = WalSync(path)

    def broken() -> None:
        raise OSError(5, "Input/output error")

    wal._fsync = broken  # type: ignore[method-assign]

    async def run() -> list:
        return await asyncio.gather(*(wal.synced() for _ in range(3)), return_exceptions=True)

    assert [type(e) for e in asyncio.run(run())] == [OSError] * 3


def test_unsynced_turns_a_full_connection_normal_inside_and_full_again_after(tmp_path):
    """InlineConnection.unsynced: a connection with a WalSync is FULL (make_engine); inside, its
    commits do not fsync (NORMAL); after, even when left by an error, it is FULL again and the
    transaction the error left open is rolled back. Without one nothing changes."""
    path, setup = _wal_database(tmp_path)
    setup.close()

    def level(conn: sqlite3.Connection) -> int:
        return conn.execute("PRAGMA synchronous").fetchone()[0]

    raw = sqlite3.connect(path)
    raw.execute("PRAGMA synchronous=FULL")
    conn = sqlite_inline.InlineConnection(raw, WalSync(path))
    with conn.unsynced():
        assert level(raw) == 1  # NORMAL
    assert level(raw) == 2  # FULL
    with pytest.raises(RuntimeError), conn.unsynced():
        raw.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("the statement after failed")
    assert level(raw) == 2 and not raw.in_transaction
    assert raw.execute("SELECT count(*) FROM t").fetchone()[0] == 0

    plain = sqlite3.connect(path)
    plain.execute("PRAGMA synchronous=NORMAL")
    with sqlite_inline.InlineConnection(plain).unsynced():
        assert level(plain) == 1
    assert level(plain) == 1
