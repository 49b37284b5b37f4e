"""A batch's callback job is built from its spec and the batch's summary (pure)."""

from taskyard_api.batches import _callback
from taskyard_api.schemas import JobFields


def test_a_callback_takes_its_spec_and_the_summary_but_no_key_of_its_own():
    spec = JobFields.model_validate(
        {
            "type": "noop",
            "payload": {"note": "hi"},
            "idempotency_key": "taken",
            "queue": "cb",
            "max_attempts": 2,
        }
    )
    job = _callback(spec, "owner", "on_complete", {"id": "B", "total": 3}, now=1_700_000_000.0)
    assert (job.status, job.queue, job.max_attempts, job.node) == ("queued", "cb", 2, "on_complete")
    assert job.payload == {"note": "hi", "batch": {"id": "B", "total": 3}}
    assert job.idempotency_key is None and job.outbox_at == 1_700_000_000.0


def test_a_callback_without_a_dict_payload_keeps_it_beside_the_summary():
    job = _callback(JobFields(type="noop", payload=[1, 2]), "o", "on_failure", {"id": "B"}, now=1.0)
    assert job.payload == {"payload": [1, 2], "batch": {"id": "B"}}
    none = _callback(JobFields(type="noop"), "o", "on_success", {"id": "B"}, now=1.0)
    assert none.payload == {"batch": {"id": "B"}}
