"""Apply Alembic migrations programmatically (`python -m taskyard_api migrate`), and tell whether
a database is at the newest one (readiness, doctor)."""

from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision. Readiness compares the database with it without importing
# Alembic, which is ~9 MiB of the api's resident memory; tests/test_api.py checks it against
# Alembic's own head, so a new migration that does not move it fails there.
HEAD_REVISION = "0016"


def alembic_config(url: str):  # noqa: ANN201 - alembic.config.Config, imported only here
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def upgrade(url: str) -> None:
    """Bring the database at `url` to the newest revision (creates the SQLite file's folder)."""
    from alembic import command

    if url.startswith("sqlite") and ":///" in url:
        path = url.split(":///", 1)[1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


async def is_current(engine: AsyncEngine) -> bool:
    """True when the database is at HEAD_REVISION."""
    async with engine.connect() as conn:
        if not await conn.run_sync(lambda c: inspect(c).has_table("alembic_version")):
            return False
        current = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    return current == HEAD_REVISION
