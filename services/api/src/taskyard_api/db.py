"""Engine and sessions. SQLite: one connection in WAL mode, run inline; PostgreSQL: a pool."""

import contextlib
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pydantic_core
from sqlalchemy import ColumnElement, any_, bindparam, event, func, literal_column, make_url, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from taskyard_common.settings import DbSettings

from .sqlite_inline import InlineConnection, inline_creator


def _json_text(value: object) -> str:
    """JSON columns encoded by pydantic-core: ~7× faster than SQLAlchemy's default json.dumps for
    the small dicts a job carries (payload, labels, backoff, event data), several per job."""
    return pydantic_core.to_json(value).decode()


# JSON columns decoded by pydantic-core too: 4-10x faster than json.loads for what a job row holds
# ('{"bench":"e2e"}' 840 -> 149 ns, '[]' 710 -> 60 ns), the same values (big ints, NaN, escapes);
# a projected batch decodes a dozen JSON columns for each job it reads.
_json_value = pydantic_core.from_json


def one_of(column: ColumnElement[Any], dialect: str, name: str = "ids") -> ColumnElement[bool]:
    """`column IN :name`, for a list whose length changes from call to call (a projected batch's
    job ids), as one statement text whatever the count; execute it with `{name: listed(values,
    dialect)}`.

    The values are a parameter, not part of the statement, so a statement built from this is
    built once (per dialect) and reused: one built per call cost ~110 µs more a query on SQLite
    (building it, ~30, and SQLAlchemy's cache key of the new objects, ~80), a few a job when jobs
    are submitted one at a time.

    `IN (?, ?, …)` is a new text for each count. SQLite: sqlite3 keeps a prepared statement per
    text (128 of them), and over a 50,000-job run the cache filled with the projector's
    statements of ~1,000 placeholders, ~190 KB each (the api's RSS +5 MiB); the values now go as
    one JSON array read by json_each, and the index is searched as before (EXPLAIN: SEARCH …
    USING INDEX (id=?), LIST SUBQUERY). PostgreSQL: asyncpg prepares each new text (a round trip,
    and PostgreSQL parses and plans a list of 1,000 parameters); one array parameter is
    `= ANY($1)`, prepared once, searched through the index the same way."""
    if dialect == "sqlite":
        # `SELECT value FROM json_each(?)` built as plain text columns: a table-valued function's
        # column collection cost ~55 µs to build.
        each = func.json_each(bindparam(name))
        return column.in_(select(literal_column("value")).select_from(each))
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))


def listed(values: Iterable[Any], dialect: str) -> Any:
    """The parameter of a `one_of` for these values."""
    values = list(values)
    return _json_text(values) if dialect == "sqlite" else values


@contextlib.asynccontextmanager
async def unsynced(session: AsyncSession) -> AsyncIterator[None]:
    """The session's transaction, begun inside, commits without waiting for the disk: for writes
    that are derived again if a crash loses them (a machine's; on PostgreSQL also the server's,
    which flushes such commits within `wal_writer_delay`). The outbox's marking is one: a job
    whose marking is lost is due again, and its resend is dropped by JetStream's dedupe or caught
    by the reconciler's check. It is never lost while a later commit is kept: SQLite's WAL and
    PostgreSQL's are written in order, and the next commit that syncs (a submit, a projection)
    takes it to disk. Saves a job submitted alone one fsync, ~0.2-0.4 ms of the event loop with
    SQLite inline (docs/performance.md, change 59)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        await session.execute(text("SET LOCAL synchronous_commit = off"))
    if dialect != "sqlite":
        yield
        return
    with (await _inline(session)).unsynced():
        yield


@contextlib.asynccontextmanager
async def synced_off_loop(session: AsyncSession) -> AsyncIterator[None]:
    """The session's transaction, begun and committed inside, is on the disk once the block is
    left, as any commit; on SQLite (`synchronous=FULL`) the wait for the disk comes after the
    commit, on a worker thread (sqlite_inline.WalSync), and the event loop serves others
    meanwhile: an inline fsync holds it 0.3-0.7 ms. Left by an error, nothing is waited for."""
    driver = await _inline(session) if session.get_bind().dialect.name == "sqlite" else None
    if driver is None or driver.wal is None:
        yield
        return
    with driver.unsynced():
        yield
    await driver.wal.synced()


async def _inline(session: AsyncSession) -> InlineConnection:
    driver = (await (await session.connection()).get_raw_connection()).driver_connection
    assert driver is not None  # a connection a session holds is open
    return driver


def make_engine(settings: DbSettings) -> AsyncEngine:
    url = settings.url
    if url.startswith("sqlite"):
        # One connection: SQLite has one writer at a time, and pooled connections waiting for it
        # sleep in its busy handler instead of being woken (docs/performance.md, change 1).
        # Sessions are short; none is held across a wait. Inline: see sqlite_inline.
        engine = create_async_engine(
            url,
            echo=settings.echo,
            async_creator=inline_creator(
                make_url(url).database or ":memory:", timeout=30, synced=settings.sqlite_synchronous == "FULL"
            ),
            pool_size=1,
            max_overflow=0,
            json_serializer=_json_text,
            json_deserializer=_json_value,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
            cur.execute(f"PRAGMA wal_autocheckpoint={int(settings.sqlite_wal_autocheckpoint)}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(
        url,
        echo=settings.echo,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        json_serializer=_json_text,
        json_deserializer=_json_value,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@contextlib.asynccontextmanager
async def one_process_at_a_time(sessions: async_sessionmaker[AsyncSession], name: str) -> AsyncIterator[bool]:
    """True in the one api process that holds `name` for the block, False in the others.

    PostgreSQL: a session advisory lock on a connection kept for the block; a process that dies
    drops its connection and with it the lock. SQLite: always True (one api process per file), and
    no connection is held, so the block may use the only one."""
    engine: AsyncEngine = sessions.kw["bind"]
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = zlib.crc32(f"taskyard.{name}".encode())
    async with engine.connect() as conn:
        held = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}))
        await conn.commit()  # the lock is the session's, not the transaction's: end the snapshot
        try:
            yield held
        finally:
            if held:
                await conn.scalar(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
