"""/api/v1/keys (admin) and /api/v1/whoami."""

import time

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import select

from . import audit
from .api_doc import answers
from .auth import Principal, create_key, require
from .input_checks import CheckedRoute
from .models import ApiKey
from .schemas import KeyCreate, iso

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)


@router.get("/whoami", responses=answers())
async def whoami(who: Principal = require("viewer")):
    return {"id": who.id, "name": who.name, "role": who.role}


@router.post("/keys", status_code=201, responses=answers())
async def keys_create(body: KeyCreate, request: Request, who: Principal = require("admin")):
    async with request.app.state.sessions() as session:
        row, plain = await create_key(session, body.name, body.role)
        await session.commit()
    await audit.record(request, who, "key.create", row.id, name=row.name, role=row.role)
    return {"id": row.id, "name": row.name, "role": row.role, "key": plain, "created_at": iso(row.created_at)}


@router.get("/keys", responses=answers())
async def keys_list(request: Request, who: Principal = require("admin")):
    async with request.app.state.sessions() as session:
        rows = await session.scalars(select(ApiKey).order_by(ApiKey.created_at))
        return {
            "keys": [
                {
                    "id": r.id,
                    "name": r.name,
                    "role": r.role,
                    "created_at": iso(r.created_at),
                    "revoked_at": iso(r.revoked_at),
                }
                for r in rows
            ]
        }


@router.delete("/keys/{key_id}", status_code=204, responses=answers(404))
async def keys_revoke(key_id: str, request: Request, who: Principal = require("admin")):
    async with request.app.state.sessions() as session:
        row = await session.get(ApiKey, key_id)
        if row is None:
            raise HTTPException(404, f"key {key_id} not found")
        if row.revoked_at is None:
            row.revoked_at = time.time()
            await session.commit()
            await audit.record(request, who, "key.revoke", key_id, name=row.name, role=row.role)
    request.app.state.keys.forget()
    return Response(status_code=204)
