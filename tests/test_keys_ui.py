"""A throttled job's page in a real browser says which key holds it and how many wait before it."""

import pytest

from .stack import Stack
from .test_ui_work import (  # noqa: F401 - the browser fixtures
    browser,
    expect,
    pages,
    sign_in,
)

pytestmark = pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)


def test_a_throttled_job_page_names_its_key_and_who_is_ahead(stack: Stack, pages):  # noqa: F811
    stack.start_api()
    ui = stack.start_ui(TASKYARD_UI_LIVE_INTERVAL_S="0.3")
    key = {"key": "tenant:acme", "limit": 1}
    with stack.http() as c:
        jobs = [c.post("/api/v1/jobs", json={"type": "noop", "queue": "later", "concurrency": key}).json()
                for _ in range(3)]  # fmt: skip
    page = pages.open()
    sign_in(page, ui.url, stack.admin_key)
    page.goto(f"{ui.url}/jobs/{jobs[2]['id']}")
    banner = page.locator("#waiting-banner")
    expect(banner).to_contain_text("Waiting for a place under its key")
    expect(banner).to_contain_text("1/1 running for key tenant:acme; 1 ahead of you for this key")
    stack.start_executor(queues="later")
    expect(page.locator("#job-badge")).to_have_text("succeeded")
    expect(page.locator("#waiting-banner")).to_have_count(0)
