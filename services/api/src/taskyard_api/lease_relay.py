"""Any api replica serves any lease call: the call goes to the api process that holds the lease.

A REST worker's lease lives in the memory of the api process that answered its claim (leases.py:
the JetStream delivery, the keepalive, the TTL), and that process's id is in the lease id
(`ls_<owner>_<random>`, LeaseService.owner_of). Each api process answers calls on its own leases on
its own core NATS subject, `<prefix>.lease.<owner>` (Topology.lease_subject). A call that reaches
another process is forwarded there with request/reply and answered with what the owner answered:
the owner runs the very same call as a local one (`CALLS` in routes_leases: the same LeaseService
method, the same answer), the caller's key travelling with it so the owner checks that the lease is
the caller's, as for its own callers. The forwarding is only this: the call, the key and the answer
(its status and its JSON body, byte for byte) serialised.

An owner that is gone (killed or stopped: NATS answers "no responders" at once, and again RECHECK_S
later, so that an owner between two connections to NATS is not taken for gone) took its leases with
it: 404 naming the lease, and the delivery it held comes back after ack_wait as when any api
process dies. A forwarded call waits up to its own wait (an `ask` long-polls up to `wait_s`) plus
FORWARD_SLACK_S; meanwhile the owner is probed every PROBE_S, so one that dies mid-call ends the wait
at once instead of at the timeout. An owner that does not answer in time (cut off from NATS, or
stuck) is taken as lost: 409, the lease with it; its delivery comes back once the lease expires there
or, if it is gone, after ack_wait. A call that did reach it may still have been applied (at least
once, as for any worker whose answer was lost).

A claim goes the same way to the api process serving its worker (the worker's home, leases.py):
`LeaseService.claim` raises Elsewhere naming it, and the claim is forwarded there. A home that is
gone is taken over here (its leases are gone with it); one that does not answer in time is a 409,
and the worker claims again.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel, ValidationError

from taskyard_common.background import Background
from taskyard_common.topology import Topology

from .auth import Principal
from .errors import refusal
from .failures import DomainError, NotFound, Refused, TooLarge
from .leases import HOME_TRIES, Elsewhere, LeaseService
from .views import JsonAnswer

log = logging.getLogger("taskyard.api.lease_relay")

# Beyond the call's own wait: more than the api's JetStream timeout (10 s), so an owner whose
# publishes are slow still answers before the caller gives up on it.
FORWARD_SLACK_S = 15.0
# How often a waiting forwarded call checks that the owner is still there (an empty request).
PROBE_S = 1.0
# An owner is gone when a probe finds nobody twice this far apart (see LeaseRelay._owner_there).
RECHECK_S = 0.25


@dataclass(frozen=True)
class Call:
    """One kind of call on a lease: the model of its body, what runs it (on the owner, for a local
    caller or a forwarded one alike) and answers its JSON, and how long it may wait of its own
    asking (the `ask` long-poll)."""

    model: type[BaseModel]
    run: Callable[[LeaseService, Principal, str, Any], Awaitable[Any]]
    wait_s: Callable[[Any], float] = lambda body: 0.0


class OwnerGone(NotFound):
    """Nobody listens on the process's subject (twice, RECHECK_S apart): it is gone."""

    def __init__(self, message: str, owner: str) -> None:
        super().__init__(message)
        self.owner = owner


@dataclass(frozen=True)
class Forwarded:
    """A call on its way to the api process that runs it: which call, what it is on (a lease id; a
    queue for a claim), the caller's key and the body as the receiving process validated it (the
    owner validates it again with the same model)."""

    action: str
    target: str
    who: Principal
    body: dict[str, Any]

    def encode(self) -> bytes:
        key = {"id": self.who.id, "name": self.who.name, "role": self.who.role}
        return json.dumps(
            {"action": self.action, "target": self.target, "key": key, "body": self.body},
            separators=(",", ":"),
        ).encode()

    def gone(self, owner: str) -> str:
        if self.action == "claim":
            return f"claim on queue {self.target}: the api process serving the worker ({owner}) is gone"
        return (
            f"lease {self.target} not found: the api process that issued it ({owner}) is gone, and its "
            "leases with it; the job it held goes back to its queue after ack_wait"
        )

    def silent(self, owner: str, timeout_s: float) -> str:
        if self.action == "claim":
            return (
                f"claim on queue {self.target}: the api process serving the worker ({owner}) did not "
                f"answer within {timeout_s:g}s; claim again"
            )
        return (
            f"lease {self.target}: the api process holding it ({owner}) did not answer within "
            f"{timeout_s:g}s; take the lease as lost: its job goes back to its queue when the lease "
            "expires, or after ack_wait if that process is gone"
        )

    @classmethod
    def decode(cls, data: bytes) -> "Forwarded":
        try:
            raw = json.loads(data)
            key = raw["key"]
            who = Principal(str(key["id"]), str(key["name"]), str(key["role"]))
            body = raw["body"]
            if not isinstance(body, dict):
                raise TypeError("body is not an object")
            # `lease_id`: the name before claims were forwarded too (an older api process's call).
            target = raw["target"] if "target" in raw else raw["lease_id"]
            return cls(str(raw["action"]), str(target), who, body)
        except (ValueError, KeyError, TypeError) as exc:
            raise DomainError(f"malformed forwarded lease call: {exc!r}"[:300]) from None


@dataclass(frozen=True)
class Answer:
    """The owner's answer to a forwarded call: its HTTP status and JSON body, as it would have
    answered its own caller."""

    status: int
    body: bytes

    def encode(self) -> bytes:
        return b"%d\n" % self.status + self.body

    @classmethod
    def decode(cls, data: bytes) -> "Answer":
        status, _, body = data.partition(b"\n")
        return cls(int(status), body)


class LeaseRelay:
    def __init__(
        self, nc: NatsClient, topo: Topology, leases: LeaseService, calls: Mapping[str, Call]
    ) -> None:
        self.nc, self.topo, self.leases, self.calls = nc, topo, leases, calls
        self._sub: Subscription | None = None
        self._serving = Background()

    async def start(self) -> None:
        subject = self.topo.lease_subject(self.leases.owner)
        self._sub = await self.nc.subscribe(subject, cb=self._on_call)
        await self.nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
        self._serving.cancel()

    # -- the caller's side ----------------------------------------------------------------------
    async def call(self, who: Principal, action: str, lease_id: str, body: BaseModel) -> Any:
        """The call's answer: run here when this process holds the lease (or no process could),
        else the owner's answer as it gave it."""
        call = self.calls[action]
        owner = self.leases.owner_of(lease_id)
        if owner is None or owner == self.leases.owner:
            return await call.run(self.leases, who, lease_id, body)
        forwarded = Forwarded(action, lease_id, who, body.model_dump(mode="json"))
        return _response(await self.forward(owner, forwarded, call.wait_s(body) + FORWARD_SLACK_S))

    async def claim(self, who: Principal, queue: str, body: BaseModel) -> Any:
        """A claim's answer: run here when this process serves the worker (or becomes its home), else
        what the worker's home answered. A home found gone is taken over here."""
        call = self.calls["claim"]
        for _ in range(HOME_TRIES):
            try:
                return await call.run(self.leases, who, queue, body)
            except Elsewhere as elsewhere:
                home = elsewhere.home
            forwarded = Forwarded("claim", queue, who, body.model_dump(mode="json"))
            try:
                return _response(await self.forward(home, forwarded, call.wait_s(body) + FORWARD_SLACK_S))
            except OwnerGone:
                log.info("worker of a claim on %s: its api process %s is gone; served here now", queue, home)
                self.leases.gone.add(home)
        raise Refused(f"claim on queue {queue}: the worker's api process keeps changing; claim again")

    async def forward(self, owner: str, forwarded: Forwarded, timeout_s: float) -> Answer:
        subject = self.topo.lease_subject(owner)
        target, data = forwarded.target, forwarded.encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        request: asyncio.Future | None = None
        try:
            while True:
                if request is None:
                    if (left := deadline - loop.time()) <= 0:
                        raise NatsTimeoutError
                    request = asyncio.ensure_future(self.nc.request(subject, data, timeout=left))
                done, _ = await asyncio.wait({request}, timeout=PROBE_S)
                if not done:  # still waiting: is the owner still there?
                    await self._owner_there(subject)
                    continue
                try:
                    return Answer.decode(request.result().data)
                except NoRespondersError:
                    # Nobody received the call. An owner between two connections to NATS gets it again.
                    await self._owner_there(subject)
                    request = None
        except NoRespondersError:
            log.info("%s on %s: api process %s is gone", forwarded.action, target, owner)
            raise OwnerGone(forwarded.gone(owner), owner) from None
        except NatsTimeoutError:
            log.warning(
                "%s on %s: api process %s did not answer within %gs",
                forwarded.action,
                target,
                owner,
                timeout_s,
            )
            raise Refused(forwarded.silent(owner, timeout_s)) from None
        except MaxPayloadError:
            raise TooLarge(
                f"lease {target}: the call is larger than NATS carries ({self.nc.max_payload} bytes) "
                "to the api process holding the lease"
            ) from None
        finally:
            if request is not None:
                request.cancel()

    async def _owner_there(self, subject: str) -> None:
        """Return while the owner answers a probe or is busy (its probe times out); raise
        NoRespondersError once NATS says twice, RECHECK_S apart, that nobody listens there: once can
        be an owner between two connections to NATS, whose leases live on."""
        for recheck in (True, False):
            try:
                await self.nc.request(subject, b"", timeout=PROBE_S)
                return
            except NatsTimeoutError:
                return
            except NoRespondersError:
                if not recheck:
                    raise
                await asyncio.sleep(RECHECK_S)

    # -- the owner's side -----------------------------------------------------------------------
    async def _on_call(self, msg: Msg) -> None:
        if not msg.data:  # a probe of a waiting caller: this process is here
            with contextlib.suppress(NatsError):
                await msg.respond(b"")
            return
        # A task per call: an `ask` long-polls, and callbacks of one subscription run one at a time.
        self._serving.spawn(self._serve(msg))

    async def _serve(self, msg: Msg) -> None:
        answer = await self.answer(msg.data)
        try:
            await msg.respond(answer.encode())
        except NatsError as exc:  # the caller times out (409)
            log.warning("forwarded lease call not answered: %s", exc)

    async def answer(self, data: bytes) -> Answer:
        """Run a forwarded call as a local one and answer what a local caller would have got."""
        try:
            forwarded = Forwarded.decode(data)
            call = self.calls.get(forwarded.action)
            if call is None:
                raise DomainError(f"malformed forwarded lease call: no call {forwarded.action!r}")
            try:
                body = call.model.model_validate(forwarded.body)
            except ValidationError as exc:  # validated by the sender: another version of the api?
                raise DomainError(f"malformed forwarded lease call: {exc}"[:300]) from None
            out = await call.run(self.leases, forwarded.who, forwarded.target, body)
            if isinstance(out, Response):  # a claim that found no job: 204
                return Answer(out.status_code, bytes(out.body))
            return Answer(200, bytes(JsonAnswer(out).body))
        except Exception as exc:
            found = refusal(exc)
            if found is None:
                log.exception("forwarded lease call failed")
                found = (500, "Internal Server Error (the api process holding the lease)")
            status, detail = found
            return Answer(status, bytes(JSONResponse({"detail": detail}).body))


def _response(answer: Answer) -> Response:
    """The answer of the process that ran the call, as it gave it."""
    return Response(
        answer.body, status_code=answer.status, media_type="application/json" if answer.body else None
    )
