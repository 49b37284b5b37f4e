"""`python -m taskyard_api [serve|migrate|create-key NAME --role ROLE]`."""

import argparse
import asyncio
import gc
import json
import sys

import uvicorn

from taskyard_common.logging_setup import setup_logging, uvicorn_log_config
from taskyard_common.settings import DbSettings

from .settings import ApiSettings


async def _create_key(name: str, role: str) -> dict:
    from .auth import create_key
    from .db import make_engine, make_sessionmaker

    engine = make_engine(DbSettings())
    try:
        async with make_sessionmaker(engine)() as session:
            row, plain = await create_key(session, name, role)
            await session.commit()
        return {"id": row.id, "name": name, "role": role, "key": plain}
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskyard_api")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the REST API (default)")
    sub.add_parser("migrate", help="apply database migrations")
    key = sub.add_parser("create-key", help="create an API key and print it as JSON")
    key.add_argument("name")
    key.add_argument("--role", default="admin", choices=["viewer", "submitter", "admin"])
    args = parser.parse_args(argv)
    setup_logging("taskyard-api")
    if args.command == "migrate":
        from .migrate import upgrade

        upgrade(DbSettings().url)
        print("database migrated", file=sys.stderr)
        return 0
    if args.command == "create-key":
        print(json.dumps(asyncio.run(_create_key(args.name, args.role))))
        return 0
    # Importing and building the app makes ~140,000 objects that live as long as the process; the
    # cyclic GC walking them again and again meanwhile was ~12 % of the api's start-up CPU. It is
    # off until the app is built (the lifespan then freezes what is loaded: app.py).
    gc.disable()
    try:
        from .app import create_app

        settings = ApiSettings()
        app = create_app(settings)
    finally:
        gc.enable()
    # proxy_headers off: uvicorn's default trusts X-Forwarded-For from 127.0.0.1 (any local
    # process could pick its own address); the app honours it only from forwarded_allow_ips.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        proxy_headers=False,
        log_config=uvicorn_log_config(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
