"""A job message's Nats-Msg-Id: short (nats-server keeps each one of the duplicate window in
memory), one per job and per generation/resume, and the same rule on the API's and the wire's side."""

from taskyard_api.ids import JOB_ID, new_id
from taskyard_api.publisher import spec_of
from taskyard_common.schemas import message_id, message_ids

from .records import record


def test_a_job_ids_random_tail():
    job_id = new_id(1_700_000_000.0)
    assert JOB_ID.fullmatch(job_id)
    assert message_id(job_id) == job_id[10:] and len(message_id(job_id)) == 16


def test_ids_of_one_millisecond_keep_distinct_message_ids():
    # new_id increments the random part within a millisecond: the tails differ, not only the time.
    # A time in the past: a later one would hold back every id this process mints after it.
    ids = [new_id(1_700_000_000.0) for _ in range(10_000)]
    assert len({message_id(i) for i in ids}) == 10_000


def test_a_bumped_generation_or_resume_is_a_new_message():
    job_id = new_id()
    tail = job_id[-16:]
    assert [message_id(job_id, g, r) for g, r in ((0, 0), (1, 0), (0, 1), (1, 2))] == [
        tail,
        f"{tail}:1:0",
        f"{tail}:0:1",
        f"{tail}:1:2",
    ]


def test_the_record_and_the_spec_it_publishes_agree():
    job_id = new_id()
    for generation, resume in ((0, 0), (2, 1)):
        job = record(job_id, generation=generation, resume=resume)
        assert job.msg_id == spec_of(job).msg_id == message_id(job_id, generation, resume)


def test_a_message_published_before_the_short_ids_is_still_the_jobs():
    # The reconciler accepts either form at the job's stream sequence; another job's id is neither.
    job_id, other = new_id(), new_id()
    assert message_ids(job_id) == (job_id[-16:], job_id)
    assert message_ids(job_id, 1, 2) == (f"{job_id[-16:]}:1:2", f"{job_id}:1:2")
    assert not set(message_ids(other)) & set(message_ids(job_id))
