"""REST workers' questions share the executor's checkpoint ids, so a decision in a job's journal
answers the same question wherever the job runs next (a REST worker or ctx.ask)."""

from taskyard_api.checkpoints import _after
from taskyard_api.leases import LEASE_ON_REJECT, question_id
from taskyard_executor.checkpoints import checkpoint_request


def test_a_rest_question_has_the_id_ctx_ask_gives_the_same_name():
    for job_id, generation, name in [("01ABC", 0, "Which region?"), ("01XYZ", 3, "lib")]:
        ck = checkpoint_request(
            job_id,
            generation,
            name,
            kind="question",
            message=name,
            data=None,
            choices=None,
            approvers="admin",
            on_reject="fail",
            timeout=60,
        )
        assert question_id(job_id, generation, name) == ck["id"]
    assert question_id("01ABC", 0, "a") != question_id("01ABC", 1, "a") != question_id("01ABC", 0, "b")


def test_deciding_a_rest_question_leaves_the_running_job_to_its_worker():
    class Ck:
        on_reject = LEASE_ON_REJECT
        kind = "question"
        generation = 0
        name = "q"

    job = object()
    for status in ("answered", "rejected", "expired"):
        assert _after(job, Ck(), status, None, 0.0, None) is job  # type: ignore[arg-type]
