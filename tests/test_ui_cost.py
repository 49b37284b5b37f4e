"""The dashboard's cost view in a real browser (Debian's Chromium) on the real stack: totals by
team, by type and by batch after jobs that failed once and then succeeded; no console errors.

With TASKYARD_SCREENSHOTS=docs/screenshots set, the test also (re)writes cost.png there.
"""

from pathlib import Path

import pytest
from playwright.sync_api import expect

from .stack import ROOT, Stack, wait_until
from .test_costs import FAIL_ONCE, QUICK_RETRY, _spending_batch
from .test_ui_work import SCREENSHOTS, browser, pages, sign_in  # noqa: F401 - fixtures used by name

pytestmark = pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)


def test_the_dashboard_shows_what_each_team_type_and_batch_cost(stack: Stack, pages):  # noqa: F811
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests", slots=4)
    ui = stack.start_ui()
    jobs = _spending_batch() + [
        {"type": "python", "payload": {"script": FAIL_ONCE}, "labels": {"team": "ml"}, "backoff": QUICK_RETRY}
    ]
    with stack.http() as c:
        batch_id = c.post("/api/v1/batches", json={"jobs": jobs, "name": "nightly-eval"}).json()["batch_id"]
        wait_until(lambda: c.get(f"/api/v1/batches/{batch_id}").json()["done"] == 7, 60, "the batch to end")
        wait_until(
            lambda: c.get("/api/v1/costs", params={"by": "batch"}).json()["total"]["attempts"] == 14, 10
        )

    page = pages.open()
    sign_in(page, ui.url, stack.admin_key)
    section = page.locator("section", has=page.get_by_role("heading", name="Cost over the past 1 hour"))
    expect(section).to_be_visible()
    table = section.locator("table.cost-table")
    # By team (the default): ml spent 0.24 usd on its three `spends` jobs and ran the python job.
    expect(table.locator("thead th").first).to_have_text("Team")
    ml = table.locator("tbody tr", has=page.locator("th", has_text="ml"))
    expect(ml).to_contain_text("$0.2400 llm_tokens")
    expect(ml.locator("td").nth(0)).to_have_text("4")  # jobs
    expect(ml.locator("td").nth(1)).to_have_text("8")  # attempts: each ran twice
    expect(table.locator("tbody tr").first).to_contain_text("ml")  # largest spend first
    expect(table.locator("tfoot")).to_contain_text("$0.4200 llm_tokens")
    expect(table.locator("tfoot td").nth(1)).to_have_text("14")
    if SCREENSHOTS:
        out = Path(SCREENSHOTS) if Path(SCREENSHOTS).is_absolute() else ROOT / SCREENSHOTS
        out.mkdir(parents=True, exist_ok=True)
        section.screenshot(path=out / "cost.png")

    section.get_by_role("link", name="Type", exact=True).click()
    expect(table.locator("thead th").first).to_have_text("Type")
    python = table.locator("tbody tr", has=page.locator("th", has_text="python"))
    expect(python.locator("td").nth(1)).to_have_text("2")
    expect(python).to_contain_text("MiB")  # the script's own peak RSS, from wait4

    section.get_by_role("link", name="Batch", exact=True).click()
    expect(table.locator("thead th").first).to_have_text("Batch")
    section.get_by_role("link", name=batch_id).click()
    expect(page).to_have_url(f"{ui.url}/batches/{batch_id}")
