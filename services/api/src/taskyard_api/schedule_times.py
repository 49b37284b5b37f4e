"""When a schedule fires: cron in an IANA time zone or a fixed interval, and what to do with fire
times that passed while no api ran (catch-up). Pure: no clock of its own, no I/O; every function
takes the time it reasons about (epoch seconds), so tests drive it with explicit datetimes.

Cron is evaluated on the zone's wall clock (croniter parses it). Daylight saving time:
- a wall time that does not exist (spring forward, 02:30 in Europe/Berlin on 2027-03-28) fires
  once, when the gap ends (03:00 local), as Debian's cron does;
- a wall time that happens twice (fall back, 02:30 on 2027-10-31) fires once, the first time.
Fire times are rounded to the millisecond, so every api process computes the same value for the
same fire (the (schedule, fire time) uniqueness depends on it).
"""

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

CatchUp = Literal["none", "latest", "all"]
# Fire times a plan walks through before it jumps ahead (a seconds cron after a day away): past
# it only the last hour of fire times is considered, the older ones count as missed.
WALK_MAX = 100_000
_JUMP_S = 3600.0
_WALL_STEPS_MAX = 10_000  # candidates one `after` reads before it gives up (a date that never comes)


class BadTiming(ValueError):
    """A cron expression, interval or time zone no rule accepts; the message names the field."""


def canon(t: float) -> float:
    """A fire time as stored: rounded to the millisecond."""
    return round(t, 3)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadTiming(f"timezone: unknown time zone {name!r} (an IANA name like Europe/Berlin)") from exc


def check_cron(expr: str) -> None:
    """5 fields (minute hour day month weekday) or 6 (seconds first), or a macro like @daily."""
    fields = expr.split()
    if not expr.strip().startswith("@") and len(fields) not in (5, 6):
        raise BadTiming(f"cron: {len(fields)} fields; use 5 (m h dom mon dow) or 6 (seconds first)")
    try:
        croniter(expr, datetime(2000, 1, 1), second_at_beginning=len(fields) == 6)
    except (CroniterError, ValueError, KeyError, IndexError) as exc:
        raise BadTiming(f"cron: {expr!r} is not a valid cron expression ({exc})") from None


@dataclass(frozen=True)
class Timing:
    """A schedule's fire times: `cron` on `tz`'s wall clock, or every `every_s` from `anchor`."""

    cron: str | None
    every_s: float | None
    tz: ZoneInfo
    anchor: float = 0.0

    def after(self, t: float) -> float | None:
        """The first fire time strictly after `t` (None: the expression never matches again)."""
        if self.every_s is not None:
            k = self._index(t, math.floor) + 1
            while self.nth(k - 1) > t:  # the division's rounding overshot
                k -= 1
            while self.nth(k) <= t:
                k += 1
            return self.nth(k)
        return self._cron_after(t)

    def nth(self, k: int) -> float:
        """The k-th fire time of an interval."""
        assert self.every_s is not None
        return canon(self.anchor + k * self.every_s)

    def _index(self, t: float, rounding: Callable[[float], int]) -> int:
        """Roughly which interval fire time `t` is: epoch seconds divided by a small interval are
        off by up to ~1e-5 periods; callers correct the result against `nth`."""
        assert self.every_s is not None
        return rounding((t - self.anchor) / self.every_s)

    def upcoming(self, t: float, n: int) -> list[float]:
        """The next `n` fire times after `t`."""
        out: list[float] = []
        while len(out) < n and (t := self.after(t)) is not None:  # type: ignore[assignment]
            out.append(t)
        return out

    def period(self, at: float) -> float:
        """How long after the fire time `at` the next one comes (inf if none)."""
        nxt = self.after(at)
        return math.inf if nxt is None else nxt - at

    def _cron_after(self, t: float) -> float | None:
        assert self.cron is not None
        wall = datetime.fromtimestamp(t, self.tz).replace(tzinfo=None)
        six = len(self.cron.split()) == 6
        it = croniter(self.cron, wall, second_at_beginning=six)
        for _ in range(_WALL_STEPS_MAX):
            try:
                candidate: datetime = it.get_next(datetime)
            except CroniterError:
                return None  # e.g. `0 0 31 2 *`: no 31 February within croniter's horizon
            at = canon(self.instant(candidate))
            # A wall time of the first pass of a repeated hour, read from its second pass, is
            # already behind `t`: skip it (it fired, or belongs to the past).
            if at > t:
                return at
        return None

    def instant(self, wall: datetime) -> float:
        """The instant a wall-clock time (naive, in `tz`) means: its first occurrence when it
        happens twice, the end of the gap when it does not exist."""
        local = wall.replace(tzinfo=self.tz, fold=0)
        at = local.timestamp()
        if datetime.fromtimestamp(at, self.tz).replace(tzinfo=None) == wall:
            return at
        return self._gap_end(wall)

    def _gap_end(self, wall: datetime) -> float:
        """The instant a gap containing `wall` ends (the clocks' jump), found by bisection between
        the two readings of `wall` (one per offset); transitions fall on whole seconds."""
        lo = wall.replace(tzinfo=self.tz, fold=1).timestamp()  # read with the later offset: before
        hi = wall.replace(tzinfo=self.tz, fold=0).timestamp()  # read with the earlier one: after
        lo, hi = min(lo, hi), max(lo, hi)
        offset_lo = datetime.fromtimestamp(lo, self.tz).utcoffset()
        while hi - lo > 1:
            mid = math.floor((lo + hi) / 2)
            if datetime.fromtimestamp(mid, self.tz).utcoffset() == offset_lo:
                lo = mid
            else:
                hi = mid
        return float(math.ceil(hi))


def timing(cron: str | None, every_s: float | None, tz_name: str, anchor: float) -> Timing:
    """A checked Timing (BadTiming names the field)."""
    tz = zone(tz_name)
    if (cron is None) == (every_s is None):
        raise BadTiming("cron: give either `cron` or `every_s`, not both and not neither")
    if cron is not None:
        check_cron(cron)
    return Timing(cron, every_s, tz, anchor)


@dataclass(frozen=True)
class Plan:
    """What one look at a schedule decides: missed fire times to catch up on (oldest first), the
    fire time that is on time (if one is), how many missed ones the catch-up policy drops, and
    the next fire time after now."""

    caught_up: list[float]
    on_time: float | None
    dropped: int
    next_at: float | None

    @property
    def fire(self) -> list[float]:
        return self.caught_up + ([self.on_time] if self.on_time is not None else [])


def _due(t: Timing, start: float, now: float, keep: int) -> tuple[list[float], int]:
    """The last `keep` fire times in [start, now] (oldest first) and how many there are."""
    if t.every_s is not None:
        if start > now:
            return [], 0
        first = t._index(start, round)
        while t.nth(first) < start:
            first += 1
        while t.nth(first - 1) >= start:
            first -= 1
        last = t._index(now, math.floor) + 1
        while t.nth(last) > now:
            last -= 1
        count = max(0, last - first + 1)
        ks = range(max(first, last - keep + 1), last + 1)
        return [t.nth(k) for k in ks], count
    recent: deque[float] = deque(maxlen=keep)
    count, at = 0, start
    while at <= now:
        if count == WALK_MAX:  # too far behind: count the rest from the last hour only
            jumped = t.after(now - _JUMP_S)
            if jumped is None or jumped <= at:
                break
            at = jumped
        recent.append(at)
        count += 1
        nxt = t.after(at)
        if nxt is None:
            break
        at = nxt
    return list(recent), count


def plan(
    t: Timing, next_fire_at: float, now: float, catch_up: CatchUp, catch_up_max: int, grace_s: float
) -> Plan:
    """Decide what to fire at `now` for a schedule whose first unhandled fire time is `next_fire_at`.

    A fire time is on time when it is late by at most `grace_s` and by at most half its period
    (a 1 s interval late by 0.8 s is a missed fire, not a slow one); it always fires. The others
    were missed (no api ran, or the process stalled): `none` drops them, `latest` fires the most
    recent of them, `all` fires each, at most the `catch_up_max` most recent.
    """
    due, count = _due(t, next_fire_at, now, max(catch_up_max, 1) + 1)
    next_at = t.after(now)
    if not due:
        return Plan([], None, 0, next_at if next_fire_at <= now else next_fire_at)
    last = due[-1]
    on_time = now - last <= min(grace_s, t.period(last) / 2)
    missed = due[:-1] if on_time else due
    missed_count = count - 1 if on_time else count
    keep = {"none": 0, "latest": 1, "all": catch_up_max}[catch_up]
    chosen = missed[len(missed) - min(keep, len(missed)) :] if keep else []
    return Plan(chosen, last if on_time else None, missed_count - len(chosen), next_at)


def wall_iso(at: float, tz: ZoneInfo) -> str:
    """A fire time as the schedule's zone reads it, with its offset (2027-03-28T03:00:00+02:00)."""
    text = datetime.fromtimestamp(at, tz).isoformat(timespec="milliseconds")
    return text.replace(".000", "")
