"""User handlers the tests load into real executors with `-A handlers_for_tests`."""

import asyncio
import os
import time

from taskyard_executor import PermanentError, handler


@handler("flaky")
async def flaky(payload, ctx):
    """Fails until attempt `succeed_on`."""
    if ctx.attempt < payload["succeed_on"]:
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@handler("always_fails")
def always_fails(payload):
    raise RuntimeError("this job never works")


@handler("refuses")
def refuses(payload):
    raise PermanentError("bad input: do not retry")


@handler("blocking_sleep")
def blocking_sleep(payload):
    """A blocking handler: runs in a thread, must not stall the executor's loop."""
    time.sleep(payload["seconds"])
    return {"slept": payload["seconds"]}


@handler("async_sleep")
async def async_sleep(payload, ctx):
    await ctx.log(f"sleeping {payload['seconds']}s")
    await asyncio.sleep(payload["seconds"])
    return {"slept": payload["seconds"]}


@handler("big_result")
def big_result(payload):
    return {"blob": "x" * payload["bytes"]}


@handler("deploy")
async def deploy(payload, ctx):
    """A step that must run once, then a human approval, then the rest."""

    def build():
        with open(payload["counter_file"], "a") as f:
            f.write(f"built on attempt {ctx.attempt}\n")
        return {"artifact": "app-v1"}

    built = await ctx.step("build", build)
    decision = await ctx.checkpoint(
        "apply-migration",
        data={"artifact": built["artifact"]},
        message="Apply the schema migration?",
        timeout=payload.get("timeout", "24h"),
        approvers=payload.get("approvers", "admin"),
        on_reject=payload.get("on_reject", "fail"),
    )
    return {
        "artifact": built["artifact"],
        "approved": decision.approved,
        "by": decision.by,
        "reason": decision.reason,
    }


@handler("pick_region")
async def pick_region(payload, ctx):
    region = await ctx.ask("Which region?", choices=["eu-west", "us-east"])
    return {"region": region}


@handler("chaos")
async def chaos(payload, ctx):
    """Sleeps a little; fails its first `fail_attempts` attempts (retried with backoff)."""
    await asyncio.sleep(payload.get("sleep", 0.01))
    if ctx.attempt <= payload.get("fail_attempts", 0):
        raise RuntimeError(f"chaos failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@handler("echo")
def echo(payload):
    """Its payload back as its result (what a workflow node hands its children)."""
    return payload


@handler("fails_until_file")
def fails_until_file(payload):
    """Fails while `payload.path` does not exist: the test decides when a retry may succeed."""
    import os

    if not os.path.exists(payload["path"]):
        raise RuntimeError(f"{payload['path']} is not there yet")
    return {"ok": True}


@handler("tests.save_artifact")
async def save_artifact(payload, ctx):
    """Stores bytes as an output named payload["name"] (test_artifacts)."""
    return await ctx.save_artifact(b"saved by handler", payload["name"])


@handler("sleep_echo")
async def sleep_echo(payload, ctx):
    """Its payload back as its result, after `payload.seconds` (a map item that takes a while)."""
    await asyncio.sleep(payload.get("seconds", 0))
    return payload


@handler("item_file_exists")
def item_file_exists(payload):
    """Fails while the map item `payload.item` (a path) does not exist: one item of a map fails."""
    import os

    if not os.path.exists(payload["item"]):
        raise RuntimeError(f"{payload['item']} is not there yet")
    return {"found": payload["item"]}


def _mark(path: str, kind: str, job_id: str) -> None:
    # A few bytes with O_APPEND: lines from several executors never interleave.
    with open(path, "a") as f:
        f.write(f"{kind} {job_id} {time.time():.6f} {os.getpid()}\n")


@handler("key_probe")
async def key_probe(payload, ctx):
    """Writes when it starts and ends (one line each) to `payload.log`, for tests that count how
    many jobs of a key really ran at once."""
    _mark(payload["log"], "start", ctx.job.id)
    await asyncio.sleep(payload.get("seconds", 0.05))
    _mark(payload["log"], "end", ctx.job.id)
    return {}


@handler("checkpoint_probe")
async def checkpoint_probe(payload, ctx):
    """Parks at one checkpoint: a question when `payload.question`, else an approval (`on_reject`
    from the payload, default `return`). Once past it, writes `passed <job> <time> <pid>` to
    `payload.log` and returns what was decided: tests see which decision reached which run."""
    if payload.get("question"):
        answer = await ctx.ask("Which region?", choices=["eu-west", "us-east"], name="region")
        decision = {"status": "answered", "answer": answer}
    else:
        d = await ctx.checkpoint("go", on_reject=payload.get("on_reject", "return"))
        decision = {"status": d.status, "reason": d.reason}
    _mark(payload["log"], "passed", ctx.job.id)
    return decision


def _first_time(marker: str) -> bool:
    """True the first time (creates `marker`)."""
    try:
        open(marker, "x").close()  # noqa: SIM115
    except FileExistsError:
        return False
    return True


@handler("converse")
async def converse(payload, ctx):
    """Three follow-up questions on one thread, with progress said between them. Each answer is
    written to `answers_file` once (a step), however often the job runs up to it again. With
    `linger_file`, the first run to reach answer `linger_at` (0: before the first question) stays
    there, to be killed mid-run."""

    async def linger(at: int) -> None:
        marker = payload.get("linger_file")
        if marker and at == payload.get("linger_at", 0) and _first_time(marker):
            await asyncio.sleep(120)

    await ctx.say("Starting: I will ask three things.")
    await linger(0)
    answers = []
    questions = payload.get("questions") or ["Which library?", "Which version?", "Ship today?"]
    for i, question in enumerate(questions, 1):
        answer = await ctx.ask(
            question,
            name=f"q{i}",
            approvers=payload.get("approvers", "admin"),
            timeout=payload.get("timeout", "24h"),
        )

        def record(i=i, answer=answer):
            with open(payload["answers_file"], "a") as f:
                f.write(f"q{i}={answer}\n")
            return answer

        answers.append(await ctx.step(f"received-{i}", record))
        await ctx.say(f"Noted answer {i}: {answer}")
        await linger(i)
    return {"answers": answers}


@handler("spends")
async def spends(payload, ctx):
    """Reports what each attempt spent (ctx.cost), then fails until attempt `succeed_on`."""
    ctx.cost(payload.get("usd", 0.01))
    ctx.cost(payload.get("tokens", 100), unit="tokens")
    if ctx.attempt < payload.get("succeed_on", 1):
        raise RuntimeError(f"spent, then failed on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@handler("kills_its_worker")
async def kills_its_worker(payload, ctx):
    """A poison job: its executor process dies under it (as an OOM kill would), every attempt."""
    import os

    os._exit(137)
