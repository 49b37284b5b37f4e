"""Which jobs a search means: one filter for `GET /api/v1/jobs` and for bulk actions by filter.

`JobFilter` is the checked input (every bad value is a 422 naming its field); `where(...)` turns
it into SQL conditions and `page_query(...)` into one keyset-paged, sorted query. The indexes that
keep a search over 1,000,000 jobs fast on PostgreSQL are in migration 0007 (figures in
docs/performance.md): the primary key for `id_prefix`, a trigram index for `error`, a
jsonb_path_ops index for `payload`, (finished_at, id) and (started_at, id) for ranges and sorts.
"""

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator, model_validator
from sqlalchemy import (
    Row,
    Select,
    and_,
    any_,
    bindparam,
    func,
    literal_column,
    select,
    text,
    tuple_,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from taskyard_common.schemas import JobState

from .failures import Invalid
from .models import jobs_table as jobs
from .schemas import LABEL_NAME, QUEUE

# Epoch seconds, or an ISO 8601 date or date-time (no offset: UTC). The pattern admits no
# impossible day but Feb 29 of a non-leap year (leap years are beyond a regex), read as March 1.
TIMESTAMP = (
    r"^(-?[0-9]{1,12}(\.[0-9]{1,9})?"
    r"|[1-9][0-9]{3}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31|02-29)"
    r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?)$"
)
TIME_DOC = (
    "Epoch seconds or an ISO 8601 date/date-time (UTC unless it has an offset; Feb 29 of a "
    "non-leap year means March 1)"
)
LABEL_FILTER = LABEL_NAME.removesuffix("$") + r"=[^\x00]{0,256}$"
ULID_DIGITS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32, the digits of a job id
ID_PREFIX = r"^[0-9A-Za-z]{1,26}$"
MAX_ERROR_TEXT = 200
MAX_PAYLOAD_FILTER = 2000
# Sortable fields: each is indexed together with the id (the tie-break and the keyset cursor).
SORTS = ("created_at", "finished_at", "started_at", "status", "queue", "type")
SORT_PATTERN = r"^-?(" + "|".join(SORTS) + ")$"
# The error text searched: "<type>: <message>". Spelled exactly as the trigram index in migration
# 0007 so PostgreSQL uses it (a bound parameter in place of 'type' would not match the index).
ERROR_TEXT_PG = "(coalesce(jobs.error ->> 'type', '') || ': ' || coalesce(jobs.error ->> 'message', ''))"
ERROR_TEXT_SQLITE = (
    "(coalesce(json_extract(jobs.error, '$.type'), '') || ': ' || "
    "coalesce(json_extract(jobs.error, '$.message'), ''))"
)
PAYLOAD_DOC = (
    "A JSON object the payload must contain. PostgreSQL: JSON containment (`@>`, any depth). "
    "SQLite: only top-level keys with string, number, boolean or null values, each equal."
)


def epoch(value: str | None) -> float | None:
    """Epoch seconds of a TIMESTAMP-shaped value (the pattern was checked)."""
    if value is None:
        return None
    if "-" not in value[1:]:
        return float(value)
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        # Only Feb 29 of a non-leap year gets past the pattern: as a bound it means March 1st.
        at = datetime.fromisoformat(value.replace("Z", "+00:00").replace("-02-29", "-03-01", 1))
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _schema(schema: dict[str, Any]) -> None:
    """As validated: a field is given with a value or left out (never null), and a bulk filter
    has at least one condition."""
    for prop in schema.get("properties", {}).values():
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            prop.update(options[0])
        prop.pop("default", None)
    schema["minProperties"] = 1


class JobFilter(BaseModel):
    """Which jobs: every condition given must hold."""

    model_config = {"extra": "forbid", "json_schema_extra": _schema}

    status: list[JobState] = Field(default_factory=list, min_length=1)
    queue: str | None = Field(None, pattern=QUEUE)
    type: str | None = Field(None, min_length=1, max_length=128)
    label: list[Annotated[str, StringConstraints(pattern=LABEL_FILTER)]] = Field(
        default_factory=list, min_length=1, max_length=32
    )
    id_prefix: str | None = Field(
        None, pattern=ID_PREFIX, description="The first characters of the job id (case-insensitive)"
    )
    error: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_ERROR_TEXT,
        description="Text the error's `type: message` contains (case-insensitive)",
    )
    payload: str | None = Field(None, max_length=MAX_PAYLOAD_FILTER, description=PAYLOAD_DOC)
    created_after: str | None = Field(None, pattern=TIMESTAMP, description=TIME_DOC)
    created_before: str | None = Field(None, pattern=TIMESTAMP, description=TIME_DOC)
    finished_after: str | None = Field(None, pattern=TIMESTAMP, description=TIME_DOC)
    finished_before: str | None = Field(None, pattern=TIMESTAMP, description=TIME_DOC)

    @field_validator("*", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("null is not a condition: leave the field out")
        return value

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parsed = json.loads(value)
        except ValueError:
            raise ValueError('not JSON: give a JSON object such as {"customer": 42}') from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> "JobFilter":
        for name in ("created", "finished"):
            after, before = epoch(getattr(self, f"{name}_after")), epoch(getattr(self, f"{name}_before"))
            if after is not None and before is not None and before < after:
                raise ValueError(f"{name}_before: earlier than {name}_after")
        return self

    @classmethod
    def checked(cls, **values: Any) -> "JobFilter":
        """A filter from query parameters; a rule broken is a 422 naming the field."""
        try:
            # An empty value is no condition (`?queue=&type=` lists every job, as it always did).
            return cls(**{k: v for k, v in values.items() if v not in (None, "", [])})
        except ValidationError as exc:
            raise Invalid(describe(exc)) from None

    def is_empty(self) -> bool:
        return not any(getattr(self, name) for name in type(self).model_fields)


def describe(exc: ValidationError) -> str:
    """`field: message; …` of a pydantic error (the range rule names its field in the message)."""
    parts = []
    for err in exc.errors()[:10]:
        field = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)


def _prefix_range(prefix: str) -> tuple[str, str | None]:
    """[low, high) of the ids starting with `prefix`: a range scan of the primary key."""
    digits = list(prefix.upper())
    low = "".join(digits)
    while digits:
        last = digits.pop()
        at = ULID_DIGITS.find(last)
        if 0 <= at < len(ULID_DIGITS) - 1:
            return low, "".join(digits) + ULID_DIGITS[at + 1]
    return low, None  # all 'Z': no upper bound


def _payload_condition(raw: str, dialect: str) -> ColumnElement[bool]:
    wanted = json.loads(raw)
    if dialect == "postgresql":
        return type_coerce(jobs.c.payload, JSONB).contains(wanted)
    conditions = []
    for key, value in wanted.items():
        if isinstance(value, dict | list):
            raise Invalid(
                f"payload: on SQLite only top-level keys with plain values are matched, not {key!r}"
            )
        path = "$." + json.dumps(key)
        if value is None:
            conditions.append(and_(func.json_type(jobs.c.payload, path) == "null"))
        elif isinstance(value, bool):
            conditions.append(func.json_type(jobs.c.payload, path) == ("true" if value else "false"))
        else:
            conditions.append(func.json_extract(jobs.c.payload, path) == value)
    conditions.append(func.json_type(jobs.c.payload) == "object")
    return and_(*conditions)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def where(f: JobFilter, dialect: str) -> list[ColumnElement[bool]]:
    """The SQL conditions of a filter, for `dialect` ("postgresql" or "sqlite")."""
    out: list[ColumnElement[bool]] = []
    if f.status:
        out.append(jobs.c.status.in_([s.value for s in f.status]))
    if f.queue:
        out.append(jobs.c.queue == f.queue)
    if f.type:
        out.append(jobs.c.type == f.type)
    for item in f.label:
        name, _, value = item.partition("=")
        out.append(jobs.c.labels[name].as_string() == value)
    if f.id_prefix:
        low, high = _prefix_range(f.id_prefix)
        out.append(jobs.c.id >= low)
        if high:
            out.append(jobs.c.id < high)
    if f.error:
        pattern = f"%{_escape_like(f.error)}%"
        if dialect == "postgresql":
            out.append(literal_column(ERROR_TEXT_PG).ilike(pattern, escape="\\"))
        else:
            out.append(literal_column(ERROR_TEXT_SQLITE).ilike(pattern, escape="\\"))
    if f.payload:
        out.append(_payload_condition(f.payload, dialect))
    for column, after, before in (
        (jobs.c.created_at, f.created_after, f.created_before),
        (jobs.c.finished_at, f.finished_after, f.finished_before),
    ):
        if (low_at := epoch(after)) is not None:
            out.append(column >= low_at)
        if (high_at := epoch(before)) is not None:
            out.append(column < high_at)
    return out


# --- sorting and keyset pages ------------------------------------------------------------------


def encode_cursor(sort: str, row: Any) -> str:
    field = sort.lstrip("-")
    value = row.id if field == "created_at" else getattr(row, field)
    raw = json.dumps([sort, value, row.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> tuple[Any, str]:
    """(sort value, id) after which the next page starts; 422 `cursor` if it is not one of ours."""
    if len(cursor) == 26 and cursor.isalnum() and sort == "-created_at":
        return cursor, cursor  # a plain job id: the cursor format of earlier versions
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_for, value, job_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise Invalid("cursor: not a cursor this API gave out") from None
    if made_for != sort or not isinstance(job_id, str):
        raise Invalid(f"cursor: made for sort {made_for!r}, not {sort!r}")
    if not isinstance(value, str | int | float):
        raise Invalid("cursor: not a cursor this API gave out")
    return value, job_id


def page_query(f: JobFilter, dialect: str, sort: str, cursor: str | None, limit: int) -> Select:
    """One page of matching jobs in `sort` order (`-field`: descending), then by id.

    Several statuses in id order are one walk of the (status, id) index per status, merged: as one
    `status IN (…)`, both databases read every job in those states and sorted them, which took
    21 ms for a page of 2 at 20,000 unfinished jobs on SQLite (polling "is anything of mine left
    unfinished?" ten times a second cost a fifth of the api's CPU)."""
    field = sort.lstrip("-")
    if field in ("created_at", "id") and len(f.status) > 1:
        rest = where(f.model_copy(update={"status": []}), dialect)
        # Ids only in the branches: a union of whole rows took 3.7 ms to build in SQLAlchemy.
        parts = [
            _page(
                select(jobs.c.id).where(jobs.c.status == state.value, *rest), sort, cursor, limit
            ).subquery()
            for state in f.status
        ]
        found = union_all(*(select(part.c.id) for part in parts))
        return _page(select(jobs).where(jobs.c.id.in_(found)), sort, None, limit)
    return _page(select(jobs).where(*where(f, dialect)), sort, cursor, limit)


def _page(query: Select, sort: str, cursor: str | None, limit: int) -> Select:
    descending = sort.startswith("-")
    field = sort.lstrip("-")
    column = jobs.c.id if field == "created_at" else jobs.c[field]
    query = query.limit(limit)
    if column is not jobs.c.id:
        query = query.where(column.is_not(None))  # a job not started/finished has no place in that order
    keys = (column, jobs.c.id) if column is not jobs.c.id else (jobs.c.id,)
    query = query.order_by(*(k.desc() if descending else k.asc() for k in keys))
    if cursor:
        value, job_id = decode_cursor(cursor, sort)
        if column is jobs.c.id:
            query = query.where(jobs.c.id < job_id if descending else jobs.c.id > job_id)
        else:
            after = tuple_(column, jobs.c.id) < tuple_(value, job_id)
            before = tuple_(column, jobs.c.id) > tuple_(value, job_id)
            query = query.where(after if descending else before)
    return query


# How many matches of a text or JSON filter the index is asked for before the page is read.
MATCH_PROBE = 2000


async def read_page(
    db: AsyncSession | AsyncConnection, f: JobFilter, dialect: str, sort: str, cursor: str | None, limit: int
) -> list[Row]:
    """One page of `page_query`, with the plan chosen from the real number of matches.

    PostgreSQL chooses between walking the sort order's index (filtering each row) and the GIN
    index of `error` or `payload` (then a sort) from its guess of how many rows match. For
    `ILIKE '%text%'` that guess comes from a sampled histogram: at 1,000,000 jobs it said 1,369
    for a text 308 jobs had, walked the primary key through all the others and took 0.6-1.5 s.
    So the GIN index is first asked for the ids of up to MATCH_PROBE matches (2-90 ms, bitmap
    scans only). Fewer than that are all the matches: the page is read among those ids through
    the primary key (~1 ms; reading it through the GIN index and heap a second time took 33 ms
    for "dead jobs of a queue with this error"). More leave the choice to the planner (the order's
    index then meets a match every few hundred rows unless the matches are all old; docs/api.md)."""
    if dialect == "postgresql" and (f.payload or (f.error and len(f.error) >= 3)):  # trigrams: 3+
        await db.execute(text("SET LOCAL enable_indexscan = off"))  # bitmap scans only
        probe = select(jobs.c.id).where(*where(f, dialect)).limit(MATCH_PROBE)
        ids = list(await db.scalars(probe))
        await db.execute(text("SET LOCAL enable_indexscan = on"))
        if len(ids) < MATCH_PROBE:
            # The filter is checked again: a row may have changed since the probe's snapshot.
            known = jobs.c.id == any_(bindparam("ids", ids, type_=ARRAY(jobs.c.id.type)))
            among = select(jobs).where(known, *where(f, dialect))
            return list(await db.execute(_page(among, sort, cursor, limit)))
    return list(await db.execute(page_query(f, dialect, sort, cursor, limit)))
