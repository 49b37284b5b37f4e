"""The schedules pages in a real browser (Debian's Chromium) on the real stack: the list with next
fire times and state, pause/resume/fire-now buttons, and a schedule's page with its history.

With TASKYARD_SCREENSHOTS=docs/screenshots set, the test also (re)writes schedules.png there.
"""

import re

import pytest
from playwright.sync_api import expect

from .stack import Stack, wait_until
from .test_ui_work import browser, pages, shot, sign_in  # noqa: F401 - fixtures used by name

pytestmark = pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)


def test_schedules_page_lists_next_fires_and_pauses_resumes_and_fires(stack: Stack, pages):  # noqa: F811
    stack.start_api()
    ui = stack.start_ui()
    with stack.http() as c:
        nightly = c.post(
            "/api/v1/schedules",
            json={"name": "nightly-report", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
                  "template": {"type": "noop", "queue": "reports"}, "overlap": "skip"},
        ).json()  # fmt: skip
        c.post(
            "/api/v1/schedules",
            json={"name": "crm-sync", "cron": "*/15 * * * *", "timezone": "America/New_York",
                  "template": {"type": "noop"}, "overlap": "queue_one"},
        )  # fmt: skip
        beat = c.post(
            "/api/v1/schedules",
            json={"name": "heartbeat", "every_s": 1, "template": {"type": "noop"}, "catch_up": "none"},
        ).json()
        wait_until(lambda: len(c.get(f"/api/v1/schedules/{beat['id']}/jobs").json()["fires"]) >= 2, 15)
        c.post(f"/api/v1/schedules/{beat['id']}/pause")

    page = pages.open()
    sign_in(page, ui.url, stack.admin_key)
    page.get_by_role("link", name="Schedules").click()
    expect(page.get_by_role("heading", name="Schedules", level=1)).to_be_visible()
    rows = page.locator("table.schedules-table tbody tr")
    expect(rows).to_have_count(3)
    row = page.locator(f"#schedule-{nightly['id']}")
    expect(row).to_contain_text("30 2 * * *")
    expect(row).to_contain_text("Europe/Berlin")
    expect(row.locator("ol.fires li")).to_have_count(3)
    expect(row.locator("ol.fires li").first).to_contain_text(re.compile(r" 02:30:00\+0[12]:00"))
    expect(page.locator("#schedule-" + beat["id"])).to_contain_text("paused")

    page.get_by_role("button", name="Pause nightly-report").click()
    expect(page.get_by_role("status").filter(has_text="Paused")).to_be_visible()
    expect(row).to_contain_text("paused")
    expect(row.locator("ol.fires")).to_have_count(0)
    page.get_by_role("button", name="Resume nightly-report").click()
    expect(row).to_contain_text("active")
    page.get_by_role("button", name="Fire now nightly-report").click()
    expect(page.get_by_role("status").filter(has_text="Fired.")).to_be_visible()
    # Overlap `skip`: its job is still queued (no executor), so a second fire is skipped, and says why.
    page.get_by_role("button", name="Fire now nightly-report").click()
    expect(page.locator("p.notice")).to_contain_text("Not fired: previous job")
    shot(page, "schedules.png")

    page.get_by_role("link", name="nightly-report").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("nightly-report")
    expect(page.locator("#next-fires li")).to_have_count(5)
    history = page.locator("#history tbody tr")
    expect(history).to_have_count(2)
    expect(history.nth(0)).to_contain_text("skipped")
    expect(history.nth(1)).to_contain_text("created")
    history.nth(1).get_by_role("link").click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9A-Z]{26}$"))
    expect(page.get_by_role("heading", level=1)).to_be_visible()
