"""Queue position and rate arithmetic from plain consumer numbers (no NATS calls here).

QueueState reads the consumers and asks the Direct Get; the formulas (NATS_NOTES, "Exact queue
position") live here so they can be checked with hand-built numbers:

- no consumer for the job's queue × priority: the job is gone;
- stream sequence ≤ the consumer's `delivered.stream_seq`: it was delivered (in flight);
- Direct Get `{"seq": S, "next_by_subj": subject}` answering another sequence (or a status): gone;
- else position = Σ num_pending of higher priorities + max(0, num_pending − 1 − Nats-Num-Pending).
"""

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from taskyard_common.topology import PRIORITIES, ConsumerSnap


@dataclass(frozen=True)
class Position:
    """Jobs that will be delivered before this one (0 = next), or why there is no position."""

    position: int | None
    higher: int = 0
    state: str = "waiting"  # waiting | in_flight | gone
    paused: bool = False  # its consumer, read in the same request


GONE = Position(None, state="gone")
IN_FLIGHT = Position(None, state="in_flight")


def without_lookup(own: ConsumerSnap | None, seq: int) -> Position | None:
    """The answer the job's own consumer gives alone (gone, in flight), or None: ask the stream."""
    if own is None:
        return GONE
    if seq <= own.delivered_stream_seq:
        return Position(None, state="in_flight", paused=own.paused)
    return None


def higher_pending(snaps: Mapping[str, ConsumerSnap], priority: str) -> int:
    """Never-delivered jobs of the priorities above `priority`: strict priority serves them first."""
    return sum(snaps[p].num_pending for p in PRIORITIES[: PRIORITIES.index(priority)] if p in snaps)


def from_direct_get(
    snaps: Mapping[str, ConsumerSnap], priority: str, seq: int, headers: Mapping[str, str]
) -> Position:
    """Position of stream sequence `seq` from the Direct Get reply headers (see module docstring)."""
    own = snaps[priority]
    if headers.get("Status") or int(headers.get("Nats-Sequence", 0)) != seq:
        return Position(None, state="gone", paused=own.paused)
    after = int(headers.get("Nats-Num-Pending", 0))
    higher = higher_pending(snaps, priority)
    # Clamp: jobs submitted between the consumer read and the Direct Get lower the difference.
    return Position(higher + max(0, own.num_pending - 1 - after), higher=higher, paused=own.paused)


Sample = tuple[float, int, int]  # (monotonic time, delivered consumer seq, num_pending)


def add_sample(samples: deque[Sample], point: Sample, every_s: float, keep_s: float) -> None:
    """Record a consumer read in `samples`: points at least `every_s` apart, and after them the
    latest read, which the next read replaces until it is `every_s` past the point before it.
    A rate is then measured up to the read just made: a job delivered between a throttled sample
    and a position read still counts (else a lone slot's start could be missed and the ETA said
    unknown: a REST worker's queue in CI). Points older than `keep_s` go."""
    if len(samples) >= 2 and samples[-1][0] - samples[-2][0] < every_s:
        samples[-1] = point
    else:
        samples.append(point)
    while samples and point[0] - samples[0][0] > keep_s:
        samples.popleft()


def rates_over(samples: Sequence[Sample], window_s: float) -> tuple[float, float]:
    """(deliveries/s, arrivals/s) of one consumer between its newest sample and the oldest one at
    most `window_s` before it; (0, 0) without two samples apart in time."""
    if not samples:
        return 0.0, 0.0
    newest = samples[-1]
    oldest = next((s for s in samples if newest[0] - s[0] <= window_s), newest)
    span = newest[0] - oldest[0]
    if span <= 0:
        return 0.0, 0.0
    delivered = newest[1] - oldest[1]
    # Arrivals = what was delivered plus how much the backlog grew (cancels count as 0).
    return delivered / span, max(0, delivered + newest[2] - oldest[2]) / span
