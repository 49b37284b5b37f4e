"""The Supervisor's restart, backoff, readiness and shutdown logic, without NATS (milliseconds)."""

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from taskyard_common.supervise import Backoff, Supervisor

FAST = Backoff(initial_s=0.05, max_s=0.2, healthy_after_s=0.3)


def restarts(reg: CollectorRegistry, task: str, service: str = "t") -> float:
    return reg.get_sample_value(f"taskyard_{service}_task_restarts_total", {"task": task}) or 0.0


async def until(cond, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


def test_backoff_doubles_and_is_capped() -> None:
    b = Backoff(initial_s=1, max_s=10)
    assert [b.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


async def test_a_dying_task_is_restarted_counted_and_reported_down() -> None:
    reg = CollectorRegistry()
    sup = Supervisor("t", reg, Backoff(initial_s=0.4, max_s=1, healthy_after_s=60))
    runs = 0
    healthy = asyncio.Event()

    async def unit() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("consumer deleted\nsecond line")
        healthy.set()
        await asyncio.Event().wait()

    sup.start("projector", unit)
    await until(lambda: restarts(reg, "projector") == 1)
    check = sup.checks()["task:projector"]
    assert check.startswith("down: RuntimeError: consumer deleted, restarting in ")
    assert "second line" not in check
    await asyncio.wait_for(healthy.wait(), 5)
    assert sup.checks() == {"task:projector": "ok"}
    assert runs == 2
    await sup.stop()


async def test_backoff_grows_while_it_keeps_dying_and_resets_after_a_healthy_run() -> None:
    reg = CollectorRegistry()
    sup = Supervisor("t", reg, Backoff(initial_s=0.1, max_s=0.4, healthy_after_s=0.6))
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    lived: list[float] = []
    live_for = {5: 0.7}  # the 5th run lives past healthy_after_s, then dies again

    async def unit() -> None:
        starts.append(loop.time())
        await asyncio.sleep(live_for.get(len(starts), 0))
        lived.append(loop.time() - starts[-1])
        raise ValueError("boom")

    sup.start("x", unit)
    await until(lambda: len(starts) >= 7, timeout=15)
    await sup.stop()
    waits = [b - a - run for a, b, run in zip(starts, starts[1:], lived, strict=False)]
    # 0.1, 0.2, 0.4, 0.4 (capped); run 5 was healthy, so 0.1 and 0.2 again (not 0.4).
    # Lower bounds are exact (a sleep never ends early); upper bounds leave room for a busy CPU.
    for wait, expected in zip(waits, [0.1, 0.2, 0.4, 0.4, 0.1, 0.2], strict=True):
        assert expected - 0.01 <= wait < expected + 0.15, waits
    assert restarts(reg, "x") >= 6


async def test_a_task_that_returns_is_finished_not_restarted() -> None:
    reg = CollectorRegistry()
    sup = Supervisor("t", reg, FAST)
    runs = 0

    async def unit() -> None:
        nonlocal runs
        runs += 1

    sup.start("once", unit)
    await asyncio.sleep(0.2)
    assert runs == 1
    assert sup.checks() == {}
    assert restarts(reg, "once") == 0
    await sup.stop()


async def test_every_runs_on_interval_and_on_wake_and_survives_failing_rounds(caplog) -> None:
    reg = CollectorRegistry()
    sup = Supervisor("t", reg, FAST)
    wake = asyncio.Event()
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database away")

    with caplog.at_level(logging.WARNING, "taskyard.supervise"):
        sup.every("outbox", 0.05, fn, at_start=True)
        await until(lambda: calls >= 3)
    assert "outbox failed, will try again: OSError: database away" in caplog.text
    assert reg.get_sample_value("taskyard_t_task_failures_total", {"task": "outbox"}) == 1
    assert restarts(reg, "outbox") == 0  # a failed round is not a death
    assert sup.checks() == {"task:outbox": "ok"}

    woken = 0

    async def on_wake() -> None:
        nonlocal woken
        woken += 1

    sup.every("marker", None, on_wake, wake=wake)
    await asyncio.sleep(0.1)
    assert woken == 0  # no interval: only a wake-up runs it
    wake.set()
    await until(lambda: woken == 1)
    assert not wake.is_set()
    await sup.stop()


async def test_stop_uses_the_stop_hook_then_cancels_the_rest() -> None:
    sup = Supervisor("t", CollectorRegistry(), FAST)
    stopping = asyncio.Event()
    finished_batch = False

    async def graceful() -> None:
        nonlocal finished_batch
        await stopping.wait()
        await asyncio.sleep(0.05)  # the batch in hand
        finished_batch = True

    async def plain() -> None:
        await asyncio.Event().wait()

    sup.start("projector", graceful, stop=stopping.set)
    sup.start("sampler", plain)
    await asyncio.sleep(0.01)
    await asyncio.wait_for(sup.stop(timeout_s=2), 3)
    assert finished_batch
    assert sup.checks() == {}


async def test_names_are_unique_and_a_registry_is_shared_by_supervisors() -> None:
    reg = CollectorRegistry()
    sup = Supervisor("t", reg, FAST)
    Supervisor("t", reg, FAST)  # a second app in the same process: same counters, no clash

    async def unit() -> None:
        await asyncio.Event().wait()

    sup.start("a", unit)
    with pytest.raises(ValueError, match="already supervised"):
        sup.start("a", unit)
    await sup.stop()
