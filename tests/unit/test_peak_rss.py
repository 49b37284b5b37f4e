"""meter.peak_rss_after: attempts that end before a reading share it; one that ended after the
last reading gets a reading of its own, so what it used is always bounded."""

import time

from taskyard_executor import meter


def test_attempts_that_ended_before_a_reading_share_it_and_a_later_end_reads_again(monkeypatch):
    readings = iter([100, 250])
    calls: list[int] = []

    def read() -> int:
        calls.append(1)
        return next(readings)

    monkeypatch.setattr(meter, "peak_rss_self", read)
    monkeypatch.setattr(meter, "_last_peak", (float("-inf"), 0))
    first_end = time.monotonic()
    second_end = time.monotonic()
    assert meter.peak_rss_after(first_end) == 100
    assert meter.peak_rss_after(second_end) == 100  # ended before that reading: the same bound
    assert len(calls) == 1
    later_end = time.monotonic() + 1e-6
    while time.monotonic() < later_end:
        pass
    assert meter.peak_rss_after(later_end) == 250  # ended after it: a reading of its own
    assert len(calls) == 2


def test_the_figure_bounds_memory_the_handler_touched():
    block = bytearray(64 * 1024 * 1024)  # touched: resident
    for i in range(0, len(block), 4096):
        block[i] = 1
    ended = time.monotonic()
    del block
    assert meter.peak_rss_after(ended) >= 64 * 1024 * 1024
