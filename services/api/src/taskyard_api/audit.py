"""The audit log: every admin action, and every refused attempt at one, with who, when, what and
from where. Written by the routes after the action took effect (or by `require` when it refused
the key), read by admins at GET /api/v1/audit, pruned like finished jobs (retention.py).

"From where" is the client address as the API sees it: the TCP peer, or the address a trusted
proxy forwarded (TASKYARD_API_FORWARDED_ALLOW_IPS; uvicorn's ProxyHeadersMiddleware rewrites
`request.client` before any route runs, so an untrusted X-Forwarded-For never lands here).
"""

import logging
import time
from typing import Any

from fastapi import Request
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .auth import Principal
from .models import AuditEvent
from .schemas import iso

log = logging.getLogger("taskyard.api.audit")
# The action name of an admin-only route, for a refused attempt (the route never ran to say it).
_ROUTE_ACTIONS = {
    ("POST", "/api/v1/keys"): "key.create",
    ("GET", "/api/v1/keys"): "key.list",
    ("DELETE", "/api/v1/keys/{key_id}"): "key.revoke",
    ("POST", "/api/v1/queues/{queue}/pause"): "queue.pause",
    ("POST", "/api/v1/queues/{queue}/resume"): "queue.resume",
    ("POST", "/api/v1/queues:pause"): "queues.pause_all",
    ("POST", "/api/v1/queues:resume"): "queues.resume_all",
    ("POST", "/api/v1/workers/{worker_id}/drain"): "worker.drain",
    ("POST", "/api/v1/workers/{worker_id}/stop"): "worker.stop",
    ("GET", "/api/v1/audit"): "audit.read",
    ("GET", "/api/v1/doctor"): "doctor.read",
}


def client_address(request: Request) -> str | None:
    return request.client.host[:64] if request.client else None


async def record(
    request: Request,
    who: Principal | None,
    action: str,
    target: str | None = None,
    outcome: str = "ok",
    **detail: Any,
) -> None:
    """Append one audit event in its own transaction (the action is already committed)."""
    row = AuditEvent(
        at=time.time(),
        actor_id=who.id if who else None,
        actor_name=who.name if who else None,
        actor_role=who.role if who else None,
        action=action,
        target=target[:200] if target else None,
        outcome=outcome,
        client=client_address(request),
        detail=detail,
    )
    async with request.app.state.sessions() as session:
        session.add(row)
        await session.commit()


def route_action(request: Request) -> str:
    """The action an admin-only route performs, from its method and path template."""
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    return _ROUTE_ACTIONS.get((request.method, template), f"{request.method} {template}"[:64])


async def refused(request: Request, who: Principal, needed: str) -> None:
    """A valid key whose role may not do an admin action: recorded, then answered 403."""
    target = next(iter(request.path_params.values()), None)
    await record(
        request, who, route_action(request), str(target) if target else None, "refused", needs=needed
    )


def event_out(row: AuditEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": iso(row.at),
        "actor": {"id": row.actor_id, "name": row.actor_name, "role": row.actor_role},
        "action": row.action,
        "target": row.target,
        "outcome": row.outcome,
        "client": row.client,
        "detail": row.detail or {},
    }


async def list_events(
    session: AsyncSession,
    *,
    actor: str | None,
    action: str | None,
    since: float | None,
    outcome: str | None,
    before_id: int | None,
    limit: int,
) -> tuple[list[AuditEvent], int | None]:
    """Newest first; `actor` matches a key's name or id; `action` an exact name or a `prefix.`;
    the cursor is the id to read below."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
    if actor:
        query = query.where((AuditEvent.actor_name == actor) | (AuditEvent.actor_id == actor))
    if action:
        if action.endswith("."):
            query = query.where(AuditEvent.action.startswith(action, autoescape=True))
        else:
            query = query.where(AuditEvent.action == action)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if outcome:
        query = query.where(AuditEvent.outcome == outcome)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    rows = list(await session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, rows[-1].id if more and rows else None


async def prune_audit(sessions: async_sessionmaker[AsyncSession], max_age_s: float) -> int:
    """Delete audit events older than `max_age_s` (run by the api's Supervisor)."""
    async with sessions() as session:
        gone = await session.execute(delete(AuditEvent).where(AuditEvent.at < time.time() - max_age_s))
        await session.commit()
    count = int(getattr(gone, "rowcount", 0) or 0)
    if count:
        log.info("retention: deleted %d audit events older than %.0f s", count, max_age_s)
    return count
