"""taskyard_common.background: tasks held until they end, finished (or cancelled) on stop."""

import asyncio

from taskyard_common.background import Background


def test_finish_waits_for_the_tasks_and_those_they_spawn_then_cancels_what_is_left():
    async def go() -> None:
        bg = Background()
        ended: list[str] = []

        async def second() -> None:
            await asyncio.sleep(0.01)
            ended.append("second")

        async def first() -> None:
            await asyncio.sleep(0.01)
            bg.spawn(second())  # spawned while finish() waits: waited for too
            ended.append("first")

        async def stuck() -> None:
            await asyncio.sleep(60)

        bg.spawn(first())
        assert len(bg) == 1
        assert await bg.finish(timeout_s=5) == 0
        assert ended == ["first", "second"] and len(bg) == 0

        never = bg.spawn(stuck())
        assert await bg.finish(timeout_s=0.05) == 1
        assert never.cancelled() and len(bg) == 0

    asyncio.run(go())


def test_a_task_leaves_when_it_ends_and_cancel_stops_the_rest():
    async def go() -> None:
        bg = Background()
        done = bg.spawn(asyncio.sleep(0, result=7))
        held = bg.spawn(asyncio.sleep(60))
        assert await done == 7
        await asyncio.sleep(0)  # the done-callback runs
        assert len(bg) == 1
        bg.cancel()
        await asyncio.gather(held, return_exceptions=True)
        assert held.cancelled() and len(bg) == 0

    asyncio.run(go())
