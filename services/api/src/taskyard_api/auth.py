"""API keys: stored as SHA-256 hashes (keys are 256-bit random, so a slow hash buys nothing)."""

import hashlib
import ipaddress
import re
import secrets
import time
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .models import ApiKey
from .ratelimit import too_many

ROLES = ("viewer", "submitter", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    role: str

    def at_least(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(session: AsyncSession, name: str, role: str) -> tuple[ApiKey, str]:
    """Insert a new key; returns the row and the plain key (shown once, never stored)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key_id = secrets.token_hex(6)
    plain = f"ty_{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(id=key_id, name=name, role=role, key_hash=hash_key(plain), created_at=time.time())
    session.add(row)
    await session.flush()
    return row, plain


async def ensure_key(session: AsyncSession, name: str, role: str, plain: str) -> bool:
    """Make sure a given plain key exists (bootstrap from a secret); True if it was added."""
    digest = hash_key(plain)
    if await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest)):
        return False
    session.add(
        ApiKey(id=secrets.token_hex(6), name=name, role=role, key_hash=digest, created_at=time.time())
    )
    await session.flush()
    return True


class KeyCache:
    """Validated keys for a few seconds, so a busy client costs no DB read per request."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], ttl_s: float) -> None:
        self._sessions = sessions
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def forget(self) -> None:
        self._cache.clear()

    async def lookup(self, key: str) -> Principal | None:
        digest = hash_key(key)
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit and hit[0] > now:
            return hit[1]
        async with self._sessions() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        principal = None
        if row is not None and row.revoked_at is None:
            principal = Principal(row.id, row.name, row.role)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, principal)
        return principal


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


# `ty_<12-hex id>_<secret>` (create_key); the id is public-ish (listed to admins), the secret is not.
_KEY_ID = re.compile(r"^ty_([0-9a-f]{12})_")


def client_bucket(host: str) -> str:
    """The failure bucket of a client address: IPv6 by /64 (one subscriber's usual allocation)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"addr:{host[:64]}"  # not an address (a proxy sent something else): still bounded
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return f"addr:{ip.ipv4_mapped}"
        return f"addr:{ipaddress.IPv6Network((ip, 64), strict=False)}"
    return f"addr:{ip}"


def failure_buckets(host: str, key: str) -> list[str]:
    """Where a failed attempt counts: its client address, and the key id it claims (if it has one).

    The address bucket catches one client trying many keys (random ids or one id); the id bucket
    catches many addresses guessing the secret of one real key.
    """
    buckets = [client_bucket(host)]
    if match := _KEY_ID.match(key):
        buckets.append(f"id:{match[1]}")
    return buckets


def require(role: str):
    """FastAPI dependency: a valid, unrevoked key with at least `role`."""

    async def dependency(request: Request) -> Principal:
        key = _presented_key(request)
        if not key:
            raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'")
        # The key is checked before any limit: a valid key is always admitted, so a client guessing
        # keys (even from the same address, even for the same key id) never locks its owner out.
        principal = await request.app.state.keys.lookup(key)
        if principal is None:
            host = request.client.host if request.client else "?"
            wait = request.app.state.auth_failures.failed(failure_buckets(host, key))
            if wait:
                raise too_many(wait, "too many invalid API keys from this client or for this key id")
            raise HTTPException(401, "unknown or revoked API key")
        if not principal.at_least(role):
            if role == "admin":  # a refused admin action is audited too
                from .audit import refused  # not at the top: audit imports Principal from here

                await refused(request, principal, role)
            raise HTTPException(
                403, f"role '{principal.role}' may not do this; '{role}' or higher is required"
            )
        return principal

    return Depends(dependency)
