"""Schedules: store them, fire them, and the one timer that sleeps until the next fire time.

A fire is a row of `schedule_fires` keyed by (schedule, fire time), inserted in the transaction
that inserts its job (JobService.submit's extra rows): with several api processes the one whose
INSERT wins created the job, the others get an IntegrityError and move on. The timer reads the
smallest `next_fire_at` through its index and sleeps until then (or until a change in this process
wakes it, or schedule_poll_s for changes made by other processes): no scan per tick.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.schemas import FINAL_STATES

from .auth import Principal
from .failures import DomainError, Forbidden, Invalid, NotFound
from .http_metrics import SCHEDULE_FIRES
from .ids import JOB_ID, new_id
from .jobs import JobService
from .models import ApiKey, fires_table, jobs_table, schedules_table
from .plan import Item
from .schedule_schemas import ScheduleCreate, ScheduleFields
from .schedule_times import BadTiming, Timing, canon, plan, timing, wall_iso
from .schemas import Dependency, JobCreate, iso
from .settings import ApiSettings

log = logging.getLogger("taskyard.api.schedules")

PREVIEW = 5  # next fire times shown with a schedule
DUE_BATCH = 100  # schedules one timer round handles (the next round follows at once)
SCHEDULE_LABEL = "taskyard.schedule"
FIRE_LABEL = "taskyard.fire_at"

_s, _f, _j = schedules_table.c, fires_table.c, jobs_table.c


def timing_of(row: Any) -> Timing:
    return timing(row.cron, row.every_s, row.timezone, row.anchor_at)


def schedule_out(row: Any, now: float, recent: list[dict] | None = None) -> dict[str, Any]:
    t = timing_of(row)
    upcoming = [] if row.paused else t.upcoming(max(now, (row.next_fire_at or now) - 1e-3), PREVIEW)
    out = {
        "id": row.id,
        "name": row.name,
        "owner_id": row.owner_id,
        "cron": row.cron,
        "every_s": row.every_s,
        "timezone": row.timezone,
        "template": row.template,
        "overlap": row.overlap,
        "catch_up": row.catch_up,
        "catch_up_max": row.catch_up_max,
        "paused": row.paused,
        "next_fire_at": iso(row.next_fire_at),
        "next_fires": [wall_iso(at, t.tz) for at in upcoming],
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }
    if recent is not None:
        out["recent_jobs"] = recent
    return out


def fire_out(row: Any) -> dict[str, Any]:
    return {
        "fire_at": iso(row.fire_at),
        "kind": row.kind,
        "outcome": row.outcome,
        "job_id": row.job_id,
        "job_status": getattr(row, "status", None),
        "reason": row.reason,
        "at": iso(row.at),
    }


def _may_change(who: Principal, row: Any) -> bool:
    return who.at_least("admin") or row.owner_id == who.id


class ScheduleService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        jobs: JobService,
        settings: ApiSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sessions, self.jobs, self.settings, self.clock = sessions, jobs, settings, clock
        self.wake = asyncio.Event()  # a change here: the timer looks again at once
        self._alarm: asyncio.TimerHandle | None = None

    # --- commands ---------------------------------------------------------------------------

    async def create(self, body: ScheduleCreate, who: Principal) -> Any:
        now = self.clock()
        row: dict[str, Any] = {
            "id": new_id(now),
            "owner_id": who.id,
            "name": body.name,
            "cron": body.cron,
            "every_s": body.every_s,
            "timezone": body.timezone or "UTC",
            "template": body.template.model_dump(mode="json", exclude_defaults=True),
            "overlap": body.overlap or "allow",
            "catch_up": body.catch_up or "latest",
            "catch_up_max": body.catch_up_max or 10,
            "paused": body.paused,
            "anchor_at": canon(now),
            "version": 0,
            "created_at": now,
            "updated_at": now,
        }
        row["next_fire_at"] = None if body.paused else self._first_fire(row, now)
        async with self.sessions() as session:
            await session.execute(insert(schedules_table).values(row))
            await session.commit()
        self.wake.set()
        return await self.get(row["id"])

    def _first_fire(self, row: dict[str, Any], now: float) -> float:
        try:
            t = timing(row["cron"], row["every_s"], row["timezone"], row["anchor_at"])
        except BadTiming as exc:
            raise Invalid(str(exc)) from None
        first = t.after(now)
        if first is None:
            raise Invalid(f"cron: {row['cron']!r} never fires")
        return first

    async def get(self, schedule_id: str) -> Any:
        async with self.sessions() as session:
            row = (await session.execute(select(schedules_table).where(_s.id == schedule_id))).first()
        if row is None:
            raise NotFound(f"schedule {schedule_id[:40]} not found")
        return row

    async def owned(self, schedule_id: str, who: Principal) -> Any:
        row = await self.get(schedule_id)
        if not _may_change(who, row):
            raise Forbidden("only an admin or the schedule's owner may change it")
        return row

    async def listing(self, limit: int) -> list[Any]:
        async with self.sessions() as session:
            rows = await session.execute(select(schedules_table).order_by(_s.id.desc()).limit(limit))
        return list(rows)

    async def update(self, schedule_id: str, who: Principal, patch: ScheduleFields) -> Any:
        old = await self.owned(schedule_id, who)
        # null, like a field left out, leaves it as it is.
        changes: dict[str, Any] = {
            k: v
            for k, v in patch.model_dump(exclude_unset=True, exclude={"template"}).items()
            if v is not None
        }
        if patch.template is not None:
            changes["template"] = patch.template.model_dump(mode="json", exclude_defaults=True)
        if changes.get("cron") is not None:
            changes["every_s"] = None
        if changes.get("every_s") is not None:
            changes["cron"] = None
        now = self.clock()
        merged = {**old._asdict(), **changes}
        if {"cron", "every_s", "timezone"} & changes.keys():
            changes["anchor_at"] = merged["anchor_at"] = canon(now)
            changes["version"] = old.version + 1
            if not old.paused:
                changes["next_fire_at"] = self._first_fire(merged, now)
        changes["updated_at"] = now
        await self._write(schedule_id, changes)
        return await self.get(schedule_id)

    async def pause(self, schedule_id: str, who: Principal, paused: bool) -> Any:
        old = await self.owned(schedule_id, who)
        now = self.clock()
        values: dict[str, Any] = {"paused": paused, "updated_at": now, "version": old.version + 1}
        # Resumed: from the next fire time on; what passed while paused was not missed.
        values["next_fire_at"] = None if paused else self._first_fire(old._asdict(), now)
        await self._write(schedule_id, values)
        return await self.get(schedule_id)

    async def _write(self, schedule_id: str, values: dict[str, Any]) -> None:
        async with self.sessions() as session:
            await session.execute(update(schedules_table).where(_s.id == schedule_id).values(values))
            await session.commit()
        self.wake.set()

    async def delete(self, schedule_id: str, who: Principal) -> None:
        """The schedule and its fire rows; the jobs it created stay."""
        await self.owned(schedule_id, who)
        async with self.sessions() as session:
            await session.execute(delete(fires_table).where(_f.schedule_id == schedule_id))
            await session.execute(delete(schedules_table).where(_s.id == schedule_id))
            await session.commit()

    async def trigger(self, schedule_id: str, who: Principal) -> dict[str, Any]:
        """Fire now, by hand (paused or not); the overlap policy applies as to any fire."""
        row = await self.owned(schedule_id, who)
        for step in range(5):  # the same millisecond as another fire: the next one
            fired = await self.fire(row, canon(self.clock() + step / 1000), "manual")
            if fired is not None:
                return fired
        raise DomainError("could not record the manual fire; retry")

    async def history(self, schedule_id: str, limit: int) -> list[dict[str, Any]]:
        """The schedule's fires, newest first, each with its job's current status."""
        query = (
            select(fires_table, _j.status)
            .outerjoin(jobs_table, _j.id == _f.job_id)
            .where(_f.schedule_id == schedule_id)
            .order_by(_f.fire_at.desc())
            .limit(limit)
        )
        async with self.sessions() as session:
            return [fire_out(row) for row in await session.execute(query)]

    # --- firing -----------------------------------------------------------------------------

    async def _previous(self, schedule_id: str) -> tuple[str, str] | None:
        """The job of the schedule's latest fire that created one, and its status (a pruned job
        counts as final)."""
        query = (
            select(_f.job_id, _j.status)
            .outerjoin(jobs_table, _j.id == _f.job_id)
            .where(_f.schedule_id == schedule_id, _f.job_id.is_not(None))
            .order_by(_f.fire_at.desc())
            .limit(1)
        )
        async with self.sessions() as session:
            row = (await session.execute(query)).first()
        if row is None or row.status is None:
            return None
        return row.job_id, row.status

    async def fire(self, s: Any, fire_at: float, kind: str) -> dict[str, Any] | None:
        """Handle one fire time of schedule `s`: create its job (or record why not). None when
        another api process handled that fire time first."""
        now = self.clock()
        owner = Principal(s.owner_id, f"schedule {s.id}", "submitter")
        async with self.sessions() as session:
            revoked = await session.scalar(select(ApiKey.revoked_at).where(ApiKey.id == s.owner_id))
        if revoked is not None:  # its owner may no longer submit: neither may its schedule
            return await self._record(s, fire_at, kind, "failed", f"the owner's key {s.owner_id} is revoked")
        previous = await self._previous(s.id)
        parents: list[Dependency] = []
        cancel: str | None = None
        if previous is not None and previous[1] not in FINAL_STATES:
            job_id, status = previous
            if s.overlap == "skip":
                return await self._record(s, fire_at, kind, "skipped", f"previous job {job_id} is {status}")
            if s.overlap == "queue_one":
                if status == "blocked":
                    return await self._record(
                        s, fire_at, kind, "skipped", f"job {job_id} already waits for the previous one"
                    )
                parents = [Dependency(job=job_id, on="finished")]
            elif s.overlap == "cancel_previous":
                cancel = job_id
        spec = JobCreate.model_validate(s.template)
        labels = {**spec.labels, SCHEDULE_LABEL: s.id, FIRE_LABEL: iso(fire_at) or ""}
        spec = spec.model_copy(update={"labels": labels})
        job_id = new_id(now)
        row = _fire_row(s.id, fire_at, kind, "created", job_id, None, now)
        item = Item(spec=spec, where="template.", parents=parents, id=job_id)
        try:
            [(job, _)] = await self.jobs.submit([item], owner, (fires_table, row))
        except IntegrityError:
            SCHEDULE_FIRES.labels("lost").inc()
            return None  # another api process fired it
        except DomainError as exc:  # the template no longer fits (a type no worker knows, …)
            return await self._record(s, fire_at, kind, "failed", exc.message)
        SCHEDULE_FIRES.labels("created").inc()
        if cancel is not None:
            try:
                await self.jobs.cancel(cancel, owner, descendants="leave")
            except DomainError as exc:  # it ended meanwhile: nothing to cancel
                log.debug("schedule %s: previous job %s not cancelled: %s", s.id, cancel, exc)
        return {**row, "fire_at": iso(fire_at), "at": iso(now), "job": job}

    async def _record(self, s: Any, fire_at: float, kind: str, outcome: str, reason: str) -> dict | None:
        now = self.clock()
        row = _fire_row(s.id, fire_at, kind, outcome, None, reason, now)
        try:
            async with self.sessions() as session:
                await session.execute(insert(fires_table).values(row))
                await session.commit()
        except IntegrityError:
            SCHEDULE_FIRES.labels("lost").inc()
            return None
        SCHEDULE_FIRES.labels(outcome).inc()
        if outcome == "failed":
            log.warning("schedule %s: fire at %s failed: %s", s.id, iso(fire_at), reason)
        return {**row, "fire_at": iso(fire_at), "at": iso(now), "job": None}

    async def _handle(self, s: Any, now: float) -> None:
        t = timing_of(s)
        decided = plan(
            t, s.next_fire_at, now, s.catch_up, s.catch_up_max, self.settings.schedule_misfire_grace_s
        )
        if decided.dropped:
            SCHEDULE_FIRES.labels("dropped").inc(decided.dropped)
            log.info(
                "schedule %s: %d missed fire times dropped (catch_up %s)", s.id, decided.dropped, s.catch_up
            )
        for at in decided.caught_up:
            await self.fire(s, at, "catch_up")
        if decided.on_time is not None:
            await self.fire(s, decided.on_time, "timer")
        # Forward only, and only for the timing it was computed from (a PATCH bumps `version`).
        async with self.sessions() as session:
            await session.execute(
                update(schedules_table)
                .where(_s.id == s.id, _s.version == s.version, _s.next_fire_at < decided.next_at)
                .values(next_fire_at=decided.next_at)
                if decided.next_at is not None
                else update(schedules_table)
                .where(_s.id == s.id, _s.version == s.version)
                .values(next_fire_at=None)
            )
            await session.commit()

    async def run_due(self) -> int:
        """One timer round: handle every schedule whose next fire time has come, then sleep until
        the next one (run by the api's Supervisor; woken by `wake`)."""
        now = self.clock()
        async with self.sessions() as session:
            due = list(
                await session.execute(
                    select(schedules_table)
                    .where(_s.next_fire_at <= now)
                    .order_by(_s.next_fire_at)
                    .limit(DUE_BATCH)
                )
            )
        for s in due:
            try:
                await self._handle(s, now)
            except (BadTiming, DomainError) as exc:  # one broken schedule does not stop the others
                log.warning("schedule %s: %s", s.id, exc)
        await self._arm(again=len(due) == DUE_BATCH)
        return len(due)

    async def _arm(self, again: bool) -> None:
        """Wake the timer when the earliest next fire time comes."""
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None
        if again:
            self.wake.set()
            return
        async with self.sessions() as session:
            soonest = await session.scalar(select(func.min(_s.next_fire_at)))
        if soonest is None:
            return
        delay = max(0.0, soonest - self.clock()) + 0.001
        if delay < self.settings.schedule_poll_s:
            self._alarm = asyncio.get_running_loop().call_later(delay, self.wake.set)


def _fire_row(
    schedule_id: str,
    fire_at: float,
    kind: str,
    outcome: str,
    job_id: str | None,
    reason: str | None,
    now: float,
) -> dict[str, Any]:
    return {
        "schedule_id": schedule_id,
        "fire_at": fire_at,
        "kind": kind,
        "outcome": outcome,
        "job_id": job_id,
        "reason": reason,
        "at": now,
    }


def valid_id(schedule_id: str) -> bool:
    return bool(JOB_ID.fullmatch(schedule_id))
