"""Request bodies of /api/v1/schedules. The job template is a job submit's body (JobCreate), so
a schedule's jobs get every job feature; what only makes sense once per request is refused."""

from typing import Literal

from pydantic import BaseModel, Field, StrictBool, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .schedule_times import BadTiming, CatchUp, check_cron, zone
from .schemas import JobCreate

Overlap = Literal["allow", "skip", "cancel_previous", "queue_one"]
EVERY_MIN_S = 0.05
EVERY_MAX_S = 366 * 86400.0
OVERLAP_DOC = (
    "What a fire does while the previous fire's job is not final: `allow` fires anyway, `skip` "
    "does not fire, `cancel_previous` cancels that job and fires, `queue_one` fires a job that "
    "waits for it to finish (depends_on, on: finished), unless one already waits"
)
CATCH_UP_DOC = (
    "Fire times missed while no api ran: `none` drops them, `latest` fires the most recent one, "
    "`all` fires each (at most `catch_up_max`, the most recent)"
)


def _refused(message: str) -> PydanticCustomError:
    """A validation error whose message is ours alone (no "Value error, " before it)."""
    return PydanticCustomError("schedule", message.replace("{", "{{").replace("}", "}}"))


def _cron(value: str | None) -> str | None:
    if value is not None:
        try:
            check_cron(value)
        except BadTiming as exc:
            raise _refused(str(exc).removeprefix("cron: ")) from None
    return value


def _zone(value: str | None) -> str | None:
    if value is not None:
        try:
            zone(value)
        except BadTiming as exc:
            raise _refused(str(exc).removeprefix("timezone: ")) from None
    return value


def _template(value: JobCreate | None) -> JobCreate | None:
    if value is None:
        return None
    for name in ("name", "depends_on", "idempotency_key", "run_at"):
        if getattr(value, name):
            raise _refused(
                f"{name} is not allowed in a schedule's template (each fire creates one job at its "
                "fire time; `delay_s` delays it, overlap: queue_one chains them)"
            )
    return value


class ScheduleFields(BaseModel):
    model_config = {"extra": "forbid"}

    name: str | None = Field(None, min_length=1, max_length=200)
    cron: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="5 fields (`m h dom mon dow`), 6 with seconds first, or a macro like `@daily`; "
        "evaluated on `timezone`'s wall clock",
    )
    every_s: float | None = Field(
        None, ge=EVERY_MIN_S, le=EVERY_MAX_S, description="An interval instead of `cron`, in seconds"
    )
    timezone: str | None = Field(None, min_length=1, max_length=64, description="An IANA zone name")
    template: JobCreate | None = Field(None, description="The job each fire submits (a POST /jobs body)")
    overlap: Overlap | None = Field(None, description=OVERLAP_DOC)
    catch_up: CatchUp | None = Field(None, description=CATCH_UP_DOC)
    catch_up_max: int | None = Field(None, ge=1, le=1000)

    _c = field_validator("cron")(_cron)
    _z = field_validator("timezone")(_zone)
    _t = field_validator("template")(_template)

    @model_validator(mode="after")
    def _one_timing(self) -> "ScheduleFields":
        if self.cron is not None and self.every_s is not None:
            raise _refused("cron, every_s: give one of them, not both")
        return self


class ScheduleCreate(ScheduleFields):
    """A new schedule: `cron` or `every_s`, and a `template`."""

    timezone: str | None = Field("UTC", min_length=1, max_length=64, description="An IANA zone name")
    template: JobCreate = Field(description="The job each fire submits (a POST /jobs body)")
    overlap: Overlap | None = Field("allow", description=OVERLAP_DOC)
    catch_up: CatchUp | None = Field("latest", description=CATCH_UP_DOC)
    catch_up_max: int | None = Field(10, ge=1, le=1000)
    paused: StrictBool = Field(False, description="Create it paused")

    @model_validator(mode="after")
    def _has_timing(self) -> "ScheduleCreate":
        if self.cron is None and self.every_s is None:
            raise _refused("cron, every_s: give one of them")
        return self


class SchedulePatch(ScheduleFields):
    """Fields to change (null or left out: unchanged); a new `cron` replaces `every_s` and the
    other way round. A new timing counts from now."""
