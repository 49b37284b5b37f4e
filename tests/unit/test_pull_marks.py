"""EmptyMarks: when a woken pull round may skip a consumer a pull just found empty."""

import time

from taskyard_executor.pull_marks import EmptyMarks


def test_a_mark_holds_until_a_later_wake_up_or_its_ttl():
    marks = EmptyMarks(ttl_s=0.2)
    asked = time.monotonic()
    marks.found("q_high", empty=True, asked_at=asked)
    assert marks.holds("q_high")
    assert not marks.holds("q_normal")  # never asked: never skipped
    marks.woken("q_high")  # a job for it was stored after the pull was sent
    assert not marks.holds("q_high")


def test_a_wake_up_received_before_the_pull_was_sent_does_not_clear_it():
    marks = EmptyMarks(ttl_s=0.2)
    marks.woken("q_normal")
    time.sleep(0.001)
    marks.found("q_normal", empty=True, asked_at=time.monotonic())  # that pull saw the job already
    assert marks.holds("q_normal")


def test_a_mark_expires_and_a_full_pull_removes_it():
    marks = EmptyMarks(ttl_s=0.05)
    marks.found("q_low", empty=True, asked_at=time.monotonic())
    time.sleep(0.06)
    assert not marks.holds("q_low")  # a due retry sends no wake-up: ask again after the ttl
    marks.found("q_low", empty=True, asked_at=time.monotonic())
    marks.found("q_low", empty=False, asked_at=time.monotonic())
    assert not marks.holds("q_low")
