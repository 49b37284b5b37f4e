"""Fixtures: one real nats-server per session (tests isolate by topology prefix) and a fresh
database per test: SQLite, plus PostgreSQL when TASKYARD_TEST_DATABASE_URL is set.

Which tests run on both databases (docs/testing.md, "One database or both"): every test that
uses `db_url` (directly or through `stack`) runs once per database in DATABASES, except a test
marked `@pytest.mark.one_database("sqlite" | "postgresql", why="...")`, whose subject is not the
database (a JetStream node fault, a nats-server restart, a browser page, CLI output, input
checks that never reach SQL, executor-side behaviour, metrics and alerting): it runs on the
database it names, or on SQLite when PostgreSQL is not configured. Anything that exercises SQL
paths (projector, gates, search, keys and rate limits, outbox, retention, two apis, reconcile,
costs, migrations) stays on both.
"""

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taskyard_common.embedded import EmbeddedCluster, EmbeddedNats

from .crash_node import lazy_disk  # noqa: F401 - a fixture: the crash tests' disk
from .own_postgres import OwnPostgres
from .stack import PG_URL, Stack, free_port, pg_admin, run_async

DATABASES = ["sqlite"] + (["postgresql"] if PG_URL else [])


def pytest_addoption(parser):
    parser.addoption(
        "--serial-tests",
        choices=["include", "skip", "only"],
        default="include",
        help="tests marked `serial` (timing bounds, heavy load): `skip` them in the parallel pass "
        "(pytest -n), run `only` them in a pass of their own; `include` (default) runs everything",
    )


def one_database(item) -> str | None:
    """The database a `one_database`-marked test runs on (None: unmarked, it runs on each)."""
    mark = item.get_closest_marker("one_database")
    if mark is None:
        return None
    [name] = mark.args
    if name not in ("sqlite", "postgresql") or not mark.kwargs.get("why"):
        raise pytest.UsageError(f'{item.nodeid}: one_database("sqlite" | "postgresql", why=...)')
    callspec = getattr(item, "callspec", None)
    if callspec is None or "db_url" not in callspec.params:
        return None  # no database (a module-wide mark also covers such tests): it runs once anyway
    return name if name in DATABASES else "sqlite"


def pytest_collection_modifyitems(config, items):
    """A `one_database` test keeps only its database's case. `task test` runs the stack tests in
    two passes: the parallel one (xdist) without the `serial` tests, then those alone, so neither
    their bounds nor their load meets the others."""
    mode = config.getoption("--serial-tests")

    def kept(item) -> bool:
        db = one_database(item)
        if db is not None and item.callspec.params["db_url"] != db:
            return False
        return mode == "include" or (item.get_closest_marker("serial") is not None) == (mode == "only")

    keep, dropped = [], []
    for item in items:
        (keep if kept(item) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_sessionfinish(session, exitstatus):
    # A pass that selects nothing (`./taskw test -- tests/test_api.py` has no serial test) is not
    # a failure: pytest's "no tests collected" (5) becomes success for the split passes only.
    if (
        exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED
        and session.config.getoption("--serial-tests") != "include"
    ):
        session.exitstatus = pytest.ExitCode.OK


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    server = EmbeddedNats(
        store_dir=tmp_path_factory.mktemp("nats"),
        port=free_port(),
        monitor_port=free_port(),
        log_file=tmp_path_factory.getbasetemp() / "nats-server.log",
    ).start()
    yield server
    server.stop()


def _migrate(url: str) -> None:
    env = {**os.environ, "TASKYARD_DB_URL": url}
    subprocess.run(
        [sys.executable, "-m", "taskyard_api", "migrate"], env=env, check=True, capture_output=True
    )


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """Migrated once per session; each test gets a copy (migrations are tested by this step)."""
    path = tmp_path_factory.mktemp("template") / "taskyard.db"
    _migrate(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_template():
    if not PG_URL:
        yield None
        return
    name = "ty_tpl_" + secrets.token_hex(4)
    run_async(pg_admin(f'CREATE DATABASE "{name}"'))
    _migrate(f"{PG_URL.rpartition('/')[0]}/{name}")
    yield name
    run_async(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=DATABASES)
def db_url(request, tmp_path):
    """A fresh, migrated database for one test."""
    if request.param == "sqlite":
        path = tmp_path / "taskyard.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    name = "ty_" + secrets.token_hex(6)
    template = request.getfixturevalue("pg_template")
    run_async(pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield f"{PG_URL.rpartition('/')[0]}/{name}"
    run_async(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def create_key(db_url: str, name: str, role: str) -> str:
    """Insert an API key straight into the test database (what `taskyard_api create-key` does)."""
    from taskyard_api.auth import create_key as insert_key
    from taskyard_api.db import make_engine, make_sessionmaker
    from taskyard_common.settings import DbSettings

    async def go() -> str:
        engine = make_engine(DbSettings(url=db_url))
        try:
            async with make_sessionmaker(engine)() as session:
                _, plain = await insert_key(session, name, role)
                await session.commit()
            return plain
        finally:
            await engine.dispose()

    return run_async(go())


@pytest.fixture
def stack(nats_server, db_url, tmp_path):
    """Services are started by the test (start_api/start_executor); all are killed afterwards."""
    s = Stack(nats=nats_server, db_url=db_url, tmp=Path(tmp_path))
    s.admin_key = create_key(db_url, "admin", "admin")
    yield s
    s.stop_all()


@pytest.fixture
def own_nats_stack(db_url, tmp_path):
    """A stack with its own nats-server, which this test may stop and restart."""
    nats = EmbeddedNats(tmp_path / "nats", free_port(), free_port(), tmp_path / "nats.log").start()
    s = Stack(nats=nats, db_url=db_url, tmp=tmp_path)
    s.admin_key = create_key(db_url, "admin", "admin")
    yield s
    s.stop_all()
    nats.stop()


@pytest.fixture
def nats_cluster(tmp_path):
    """A 3-node JetStream cluster of the wheel's nats-server on loopback ports, its own per test
    (the cluster tests kill and stop its nodes)."""
    cluster = EmbeddedCluster.local(tmp_path / "nats", log_dir=tmp_path).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test's own (tests/own_postgres.py), which it may crash."""
    if why := OwnPostgres.missing():
        pytest.skip(why)
    server = OwnPostgres(free_port()).init().start()
    yield server
    server.stop()


@pytest.fixture
def cluster_stack(nats_cluster, db_url, tmp_path):
    """A stack on the 3-node cluster: every stream, consumer and the workers bucket at replicas 3;
    services get all three URLs."""
    s = Stack(nats=nats_cluster, db_url=db_url, tmp=tmp_path, extra_env={"TASKYARD_NATS_REPLICAS": "3"})
    s.admin_key = create_key(db_url, "admin", "admin")
    yield s
    s.stop_all()
