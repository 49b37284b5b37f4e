"""Per-attempt usage as the executor measures it (meter.py, child.py): real subprocesses, threads,
the event loop and the process pool, driven through ``invoke`` with a real JobContext."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from taskyard_common.usage import usage_of
from taskyard_executor import registry
from taskyard_executor.registry import Registry, invoke, shutdown_process_pool
from tests.test_handlers import Recorder, make_ctx

MIB = 1024 * 1024
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def _burn(seconds: float) -> None:
    began = time.thread_time()
    while time.thread_time() - began < seconds:
        pass


def burn_in_pool(payload):  # module level: the pool pickles it by name
    _burn(payload["s"])
    return {"ok": True}


async def _usage(job_type: str, payload, reg: Registry = registry) -> dict:
    ctx = make_ctx(job_type, payload, Recorder())
    try:
        await invoke(reg.get(job_type), ctx)
    finally:
        figures = ctx.meter.figures()
    return figures


async def test_a_python_job_reports_its_process_cpu_and_peak_rss() -> None:
    # 0.4 s of CPU and a 150 MiB allocation held for a moment: wait4's rusage must show both.
    script = (
        BURN.format(s=0.4) + "b = bytearray(150 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
    )
    figures = await _usage("python", {"script": script})
    usage = figures["usage"]
    assert usage["measured"] == "process"
    assert 0.38 <= usage["cpu_s"] < 2.0, usage
    assert usage["peak_rss_bytes"] >= 150 * MIB, usage
    assert usage["wall_s"] >= usage["cpu_s"] * 0.9
    parsed = usage_of(figures)
    assert (
        parsed is not None
        and parsed.measured == "process"
        and parsed.peak_rss_bytes == usage["peak_rss_bytes"]
    )


async def test_a_shell_job_counts_the_children_its_shell_waited_for() -> None:
    # The shell runs two python children one after the other: their CPU adds up.
    cmd = "python3 -c 'import time\nt=time.process_time()\nwhile time.process_time()-t<0.2: pass'; " * 2
    figures = await _usage("shell", {"command": cmd, "shell": True})
    assert figures["usage"]["measured"] == "process"
    assert 0.38 <= figures["usage"]["cpu_s"] < 2.0, figures


async def test_a_failing_process_still_reports_what_it_used() -> None:
    script = BURN.format(s=0.2) + "raise SystemExit(3)\n"
    ctx = make_ctx("python", {"script": script}, Recorder())
    with pytest.raises(Exception, match="exit code 3"):
        await invoke(registry.get("python"), ctx)
    assert ctx.meter.figures()["usage"]["cpu_s"] >= 0.19


async def test_concurrent_processes_are_not_mixed_up() -> None:
    # One job burns 0.5 s, the other sleeps: RUSAGE_CHILDREN deltas would give each both.
    busy = _usage("python", {"script": BURN.format(s=0.5)})
    idle = _usage("shell", {"command": "sleep 0.6"})
    busy_fig, idle_fig = await asyncio.gather(busy, idle)
    assert busy_fig["usage"]["cpu_s"] >= 0.48
    assert idle_fig["usage"]["cpu_s"] < 0.1, idle_fig


async def test_an_async_handler_is_charged_for_its_own_steps_only() -> None:
    reg = Registry()

    @reg.handler("busy")
    async def busy(payload):
        for _ in range(4):
            _burn(0.05)
            await asyncio.sleep(0.05)
        return 1

    @reg.handler("idle")
    async def idle(payload):
        await asyncio.sleep(0.5)
        return 1

    busy_fig, idle_fig = await asyncio.gather(_usage("busy", None, reg), _usage("idle", None, reg))
    assert busy_fig["usage"]["measured"] == "loop"
    assert 0.19 <= busy_fig["usage"]["cpu_s"] < 0.35, busy_fig
    # The idle job shared the loop with 0.2 s of the other's CPU and is charged none of it.
    assert idle_fig["usage"]["cpu_s"] < 0.02, idle_fig
    assert idle_fig["usage"]["wall_s"] >= 0.5
    assert idle_fig["usage"]["peak_rss_bytes"] > 10 * MIB  # the executor's peak: an upper bound


async def test_a_thread_handler_is_charged_its_thread_time_and_costs_add_up() -> None:
    reg = Registry()

    @reg.handler("think")
    def think(payload, ctx):
        _burn(0.2)
        ctx.cost(0.25)
        ctx.cost(0.5)
        ctx.cost(1200, unit="tokens", kind="llm_tokens")
        return 1

    figures = await _usage("think", None, reg)
    assert figures["usage"]["measured"] == "thread"
    assert 0.19 <= figures["usage"]["cpu_s"] < 0.3
    assert figures["costs"] == [
        {"amount": 1200.0, "unit": "tokens", "kind": "llm_tokens"},
        {"amount": 0.75, "unit": "usd", "kind": "llm_tokens"},
    ]


async def test_a_pool_handler_is_measured_in_the_pool_worker() -> None:
    reg = Registry()
    reg.register(burn_in_pool, "burn_in_pool", blocking="process")
    try:
        figures = await _usage("burn_in_pool", {"s": 0.2}, reg)
    finally:
        shutdown_process_pool()
    assert figures["usage"]["measured"] == "pool"
    assert 0.19 <= figures["usage"]["cpu_s"] < 0.3


@pytest.mark.parametrize(
    ("amount", "unit", "kind", "field"),
    [
        (-1, "usd", "x", "amount"),
        (math.nan, "usd", "x", "amount"),
        ("1", "usd", "x", "amount"),
        (1, "", "x", "unit"),
        (1, "us d", "x", "unit"),
        (1, "usd", "k" * 65, "kind"),
    ],
)
async def test_bad_costs_are_refused_naming_the_field(amount, unit, kind, field) -> None:
    ctx = make_ctx("noop", None, Recorder())
    with pytest.raises(ValueError, match=f"^{field} "):
        ctx.cost(amount, unit=unit, kind=kind)
    assert "costs" not in ctx.meter.figures()


async def test_a_script_reports_costs_on_stdout() -> None:
    script = (
        'print(\'::taskyard::cost {"amount": 0.02, "unit": "usd", "kind": "llm_tokens"}\')\n'
        "print('::taskyard::cost {\"amount\": 0.03}')\n"
        "print('::taskyard::cost {\"amount\": -4}')\n"
    )
    rec = Recorder()
    ctx = make_ctx("python", {"script": script}, rec)
    await invoke(registry.get("python"), ctx)
    assert ctx.meter.figures()["costs"] == [{"amount": 0.05, "unit": "usd", "kind": "llm_tokens"}]
    assert "cost not recorded: amount must be a finite number >= 0" in rec.lines("stdout")[2]
