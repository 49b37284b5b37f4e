"""SubmitGroup: the next group's INSERT overlaps the previous group's publish, groups publish in
the order they were stored, and a taken idempotency key fails only the request that holds it."""

import asyncio

import pytest
from sqlalchemy.exc import IntegrityError

from taskyard_api.jobs import Submission, SubmitGroup

from .records import record


def _jobs(*ids: str) -> list:
    return [record(i) for i in ids]


class Store:
    """Records what happened in which order; a publish waits until the test lets it go."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.taken: set[str] = set()  # job ids whose insert fails as a taken key

    async def __call__(self, sub: Submission):
        name = "+".join(job.id for job in sub.jobs)
        if self.taken & {job.id for job in sub.jobs}:
            self.log.append(f"refused {name}")
            raise IntegrityError("INSERT", None, Exception("taken"))
        self.log.append(f"insert {name}")
        await asyncio.sleep(0)
        gate = self.release.setdefault(name, asyncio.Event())

        async def publish():
            self.log.append(f"publish {name}")
            await gate.wait()
            self.log.append(f"published {name}")
            return sub.jobs

        return publish


async def _until(condition) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def test_the_next_insert_runs_while_a_group_publishes_and_groups_publish_in_order() -> None:
    store = Store()
    group = SubmitGroup(store)
    first = asyncio.create_task(group.submit(Submission(_jobs("a"))))
    await _until(lambda: "publish a" in store.log)
    second = asyncio.create_task(group.submit(Submission(_jobs("b"))))
    await _until(lambda: "insert b" in store.log)
    # b is stored while a still publishes, and waits for a before it publishes itself.
    await asyncio.sleep(0.01)
    assert store.log == ["insert a", "publish a", "insert b"]
    store.release["b"].set()
    await asyncio.sleep(0.01)
    assert "publish b" not in store.log
    store.release["a"].set()
    assert [job.id for job in await first] == ["a"]
    assert [job.id for job in await second] == ["b"]
    assert store.log == ["insert a", "publish a", "insert b", "published a", "publish b", "published b"]


async def test_requests_waiting_together_share_one_insert_and_each_gets_its_jobs() -> None:
    store = Store()
    group = SubmitGroup(store)
    first = asyncio.create_task(group.submit(Submission(_jobs("a"))))
    await _until(lambda: "publish a" in store.log)
    rest = [asyncio.create_task(group.submit(Submission(_jobs(i)))) for i in ("b", "c")]
    await _until(lambda: "insert b+c" in store.log or len(store.log) > 3)
    assert store.log == ["insert a", "publish a", "insert b+c"]
    store.release["a"].set()
    store.release.setdefault("b+c", asyncio.Event()).set()
    assert [job.id for job in await first] == ["a"]
    assert [[job.id for job in await task] for task in rest] == [["b"], ["c"]]


async def test_a_taken_key_fails_only_its_request_and_the_others_are_stored() -> None:
    store = Store()
    group = SubmitGroup(store)
    first = asyncio.create_task(group.submit(Submission(_jobs("a"))))
    await _until(lambda: "publish a" in store.log)
    store.taken = {"c"}
    rest = [asyncio.create_task(group.submit(Submission(_jobs(i)))) for i in ("b", "c", "d")]
    await _until(lambda: "refused b+c+d" in store.log)
    for name in ("a", "b", "d"):
        store.release.setdefault(name, asyncio.Event()).set()
    assert [job.id for job in await first] == ["a"]
    assert [job.id for job in await rest[0]] == ["b"]
    with pytest.raises(IntegrityError):
        await rest[1]
    assert [job.id for job in await rest[2]] == ["d"]
    # a published before the requests were written one by one.
    assert store.log.index("published a") < store.log.index("insert b")


async def test_the_writer_ends_once_all_published_and_a_later_submit_starts_another() -> None:
    store = Store()
    group = SubmitGroup(store)
    store.release["a"] = asyncio.Event()
    store.release["a"].set()
    assert [job.id for job in await group.submit(Submission(_jobs("a")))] == ["a"]
    await _until(lambda: group._writer is not None and group._writer.done())
    store.release["b"] = asyncio.Event()
    store.release["b"].set()
    assert [job.id for job in await group.submit(Submission(_jobs("b")))] == ["b"]
