"""REST workers' questions share the executor's checkpoint ids, so a decision in a job's journal
answers the same question wherever the job runs next (a REST worker or ctx.ask); a lease call
forwarded to the api process holding the lease, and its answer, cross the wire unchanged."""

import json

import pytest

from taskyard_api.auth import Principal
from taskyard_api.checkpoints import _after
from taskyard_api.failures import DomainError
from taskyard_api.lease_relay import Answer, Forwarded
from taskyard_api.lease_usage import NOTHING, figures
from taskyard_api.leases import LEASE_ON_REJECT, LeaseService, question_id
from taskyard_api.routes_leases import (
    CALLS,
    AskIn,
    ClaimIn,
    CompleteIn,
    CostIn,
    ErrorIn,
    FailIn,
    HeartbeatIn,
    LogIn,
    UsageIn,
)
from taskyard_api.views import JsonAnswer
from taskyard_common.schemas import JobSpec
from taskyard_common.usage import usage_of
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


def test_a_forwarded_lease_call_and_its_answer_survive_the_wire():
    """What one api process sends the one holding a lease, and what comes back: the call, the
    caller's key and the body as validated; the owner's status and body byte for byte."""
    body = AskIn(question="Which région? \u2603", name="r\nx", choices=["eu", "us"], wait_s=12.5)
    who = Principal("k1d", "bob's key", "submitter")
    call = Forwarded("ask", "ls_0a1b2c3d_Xy-_z", who, body.model_dump(mode="json"))
    back = Forwarded.decode(call.encode())
    assert back == call and back.who == who
    assert AskIn.model_validate(back.body) == body
    assert CALLS["ask"].wait_s(body) == 12.5 and CALLS["heartbeat"].wait_s(HeartbeatIn()) == 0.0
    # Every call's body, defaults included, validates again on the owner as the same value.
    samples = {
        "heartbeat": HeartbeatIn(),
        "log": LogIn(lines=["a", "b\nc"], stream="stderr"),
        "complete": CompleteIn(
            result={"n": [1, 2.5, None, "x"], "big": 2**70},
            usage=UsageIn(cpu_s=1.25, peak_rss_bytes=2**40),
            costs=[CostIn(amount=0.125), CostIn(amount=3, unit="tokens", kind="in")],
        ),
        "fail": FailIn(error=ErrorIn(message="boom"), retry=False, delay_s=None, costs=[CostIn(amount=0)]),
        "ask": body,
        "claim": ClaimIn(worker="w-1", slots=3, wait_s=2.5, types=["echo"], lease_s=60),
    }
    assert set(samples) == set(CALLS) and CALLS["claim"].wait_s(samples["claim"]) == 2.5
    for action, sample in samples.items():
        wire = Forwarded.decode(
            Forwarded(action, "ls_0a1b2c3d_x", who, sample.model_dump(mode="json")).encode()
        )
        assert CALLS[action].model.model_validate(wire.body) == sample, action

    for status, content in [
        (200, {"lease": {"id": "ls_x"}, "outcome": "succeeded"}),
        (404, {"detail": "a\nb"}),
        (204, None),  # a claim that found no job
    ]:
        rendered = bytes(JsonAnswer(content).body) if content is not None else b""
        answer = Answer.decode(Answer(status, rendered).encode())
        assert (answer.status, answer.body) == (status, rendered)
        assert (json.loads(answer.body) if answer.body else None) == content


def test_a_malformed_forwarded_call_is_a_refusal_not_a_crash():
    for data in [b"", b"{", b"[]", b'{"action": "ask"}', b'{"action":"a","lease_id":"l","key":{},"body":{}}']:
        with pytest.raises(DomainError, match="malformed forwarded lease call"):
            Forwarded.decode(data)
    good = {"action": "log", "target": "l", "key": {"id": "i", "name": "n", "role": "admin"}, "body": []}
    with pytest.raises(DomainError, match="body is not an object"):
        Forwarded.decode(json.dumps(good).encode())
    # An api process of the version before claims were forwarded names the target `lease_id`.
    older = {"action": "log", "lease_id": "ls_x", "key": good["key"], "body": {}}
    assert Forwarded.decode(json.dumps(older).encode()).target == "ls_x"


def test_a_lease_id_names_the_api_process_that_issued_it():
    assert LeaseService.owner_of("ls_0a1b2c3d_Xy-_z12") == "0a1b2c3d"
    for foreign in [
        "ls_unknown",
        "ls_0A1B2C3D_x",
        "ls_0a1b2c3_x",
        "ls_0a1b2c3d_",
        "ls_0a1b2c3dx_y",
        "xx_0a1b2c3d_y",
    ]:
        assert LeaseService.owner_of(foreign) is None, foreign


def _spec(**extra) -> JobSpec:
    return JobSpec.model_validate({"id": "01ABC", "type": "agent.review", "queue": "q", **extra})


def test_a_rest_attempt_reports_the_lease_wall_time_and_what_the_worker_says_it_used():
    """Read back as the projector and the metrics service read an executor's outcome."""
    body = CompleteIn.model_validate(
        {
            "result": 1,
            "usage": {"cpu_s": 2.5, "peak_rss_bytes": 4096},
            "costs": [
                {"amount": 0.25},
                {"amount": 0.5},
                {"amount": 1200, "unit": "tokens"},
                {"amount": 3, "unit": "usd", "kind": "api_fees"},
            ],
        }
    )
    data = figures(_spec(labels={"team": "ml"}), started=100.0, reported=body.reported(), now=103.5)
    used = usage_of(data)
    assert used is not None
    assert (used.cpu_s, used.wall_s, used.peak_rss_bytes, used.measured) == (2.5, 3.5, 4096, "worker")
    assert used.costs == {("usd", "llm_tokens"): 0.75, ("tokens", "llm_tokens"): 1200, ("usd", "api_fees"): 3}
    assert data["labels"] == {"team": "ml"}
    # Nothing reported (a bare complete, a timeout, a cancel): the wall time alone, CPU 0.
    bare = figures(_spec(), started=100.0, reported=CompleteIn(result=1).reported(), now=100.25)
    assert bare == figures(_spec(), started=100.0, reported=NOTHING, now=100.25)
    assert bare == {"usage": {"cpu_s": 0.0, "wall_s": 0.25, "peak_rss_bytes": None, "measured": "lease"}}
    assert usage_of(bare) is not None and usage_of(bare).measured == "lease"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"usage": {"cpu_s": -1}}, "usage.cpu_s"),
        ({"usage": {"cpu_s": "NaN"}}, "usage.cpu_s"),
        ({"usage": {"wall_s": 3}}, "usage.wall_s"),  # the api measures it
        ({"costs": [{"amount": -0.5}]}, "costs.0.amount"),
        ({"costs": [{"amount": 1, "unit": "US dollars"}]}, "costs.0.unit"),
        ({"costs": [{"amount": 1}] * 101}, "costs"),
    ],
)
def test_bad_figures_on_a_complete_are_refused(extra, field):
    with pytest.raises(ValueError) as err:
        CompleteIn.model_validate({"result": 1, **extra})
    where = {".".join(str(p) for p in e["loc"]) for e in err.value.errors()}  # type: ignore[attr-defined]
    assert field in where, where
