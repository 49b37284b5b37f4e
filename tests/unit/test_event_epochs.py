"""EVENTS sequences that went back after a crash: the projector's mapping (event_epochs)."""

import asyncio

from taskyard_api.event_epochs import Epoch, effective, last_recorded, raw_of, went_back


def test_without_epochs_a_sequence_is_itself():
    assert effective(42, []) == 42


def test_an_epoch_shifts_only_what_came_after_it():
    epochs = [Epoch(after_seq=100, shift=5000)]
    assert [effective(s, epochs) for s in (99, 100, 101)] == [99, 100, 5101]


def test_a_second_crash_maps_through_the_newest_epoch_it_is_above():
    # Crash 1: the stream held 100 when found behind; 101.. were projected from 5101 on (up to
    # 5300, raw 300). Crash 2: it came back holding raw 200 (the rest unflushed).
    epochs = [Epoch(100, 5000)]
    assert went_back(200, 5300, epochs)
    epochs.append(Epoch(after_seq=200, shift=5300 - 200))
    assert effective(150, epochs) == 5150  # a survivor of crash 2: the replay of what it was
    assert effective(50, epochs) == 50
    assert effective(201, epochs) == 5301  # new: right above everything recorded


def test_a_stream_that_kept_up_did_not_go_back():
    assert not went_back(300, 300, [])
    assert not went_back(301, 5300, [Epoch(100, 5000)])


def test_the_recorded_prefix_is_found_by_bisection():
    asked: list[int] = []

    async def recorded_here(raw: int) -> bool:
        asked.append(raw)
        return raw <= 637

    assert asyncio.run(last_recorded(1, 1000, recorded_here)) == 637
    assert len(asked) <= 11
    assert asyncio.run(last_recorded(1, 1000, lambda raw: _false())) == 0
    assert asyncio.run(last_recorded(0, 0, lambda raw: _false())) == 0


async def _false() -> bool:
    return False


def test_raw_of_maps_a_recorded_sequence_back():
    """The projector's catch-up starts after the last message the database recorded, in the
    stream's own (raw) numbering."""
    assert raw_of(70, []) == 70
    epochs = [Epoch(after_seq=40, shift=60)]  # raw 41 was recorded as 101
    assert [raw_of(effective(raw, epochs), epochs) for raw in (1, 40, 41, 95)] == [1, 40, 41, 95]
