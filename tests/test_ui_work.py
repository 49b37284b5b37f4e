"""The workflow, batch and job-family pages in a real browser (Debian's Chromium) on the real stack.

Every page is watched for JavaScript errors and console errors. With
TASKYARD_SCREENSHOTS=docs/screenshots set, the tests also (re)write workflow.png, batch.png and
job-family.png there.
"""

import os
import re
from pathlib import Path

import pytest

from .stack import ROOT, Stack

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium", allow_module_level=True
    )

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)

HANDLERS = "handlers_for_tests"
WAIT_MS = 30_000
SCREENSHOTS = os.environ.get("TASKYARD_SCREENSHOTS", "")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Pages:
    """Opens desktop-sized pages and collects what went wrong on any of them."""

    def __init__(self, browser: Browser) -> None:
        self.browser, self.contexts, self.errors = browser, [], []

    def open(self) -> Page:
        ctx = self.browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
        self.contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda err: self.errors.append(f"pageerror: {err}"))
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        return page


@pytest.fixture
def pages(browser: Browser):
    expect.set_options(timeout=WAIT_MS)
    opened = Pages(browser)
    yield opened
    for ctx in opened.contexts:
        ctx.close()
    assert not opened.errors, opened.errors


def sign_in(page: Page, ui_url: str, key: str) -> None:
    page.goto(f"{ui_url}/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard", level=1)).to_be_visible()


def shot(page: Page, name: str) -> None:
    if not SCREENSHOTS:
        return
    out = Path(SCREENSHOTS)
    out = out if out.is_absolute() else ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=out / name, full_page=True)


def node(page: Page, node_id: str):
    return page.locator(f'a.dag-node[data-node="{node_id}"]')


def test_workflow_page_draws_the_dag_live_and_the_job_page_links_its_family(stack: Stack, pages, tmp_path):
    stack.start_api()
    ui = stack.start_ui(TASKYARD_UI_LIVE_INTERVAL_S="0.3")
    stack.start_executor(handlers=HANDLERS)
    flag = tmp_path / "never"
    spec = {
        "name": "nightly-report",
        "on_failure": "continue",
        "nodes": [
            {"id": "fetch", "type": "echo", "payload": {"rows": 1200}},
            {"id": "parse", "type": "echo", "needs": ["fetch"], "inputs": {"rows": "fetch/rows"}},
            {"id": "validate", "type": "fails_until_file", "payload": {"path": str(flag)}, "max_attempts": 1,
             "needs": ["fetch"]},
            {"id": "alert", "type": "echo", "needs": ["validate"]},
            {"id": "report", "type": "echo", "queue": "reports", "needs": ["parse"]},
            {"id": "publish", "type": "echo", "needs": ["report", "parse"]},
        ],
    }  # fmt: skip
    with stack.http() as c:
        created = c.post("/api/v1/workflows", json=spec)
        assert created.status_code == 201, created.text
        wf = created.json()
    page = pages.open()
    sign_in(page, ui.url, stack.admin_key)
    page.goto(f"{ui.url}/workflows/{wf['id']}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("nightly-report")
    expect(page.locator("a.dag-node")).to_have_count(6)
    # Live: the failed branch and the node waiting for a worker appear without a reload.
    expect(node(page, "validate")).to_have_attribute("data-status", "dead")
    expect(node(page, "alert")).to_have_attribute("data-status", "skipped")
    expect(node(page, "report")).to_have_attribute("data-status", "queued")
    expect(node(page, "publish")).to_have_attribute("data-status", "blocked")
    expect(node(page, "publish").locator("title")).to_contain_text("Waiting for 1 parent(s): report (queued)")
    expect(node(page, "validate").locator("title")).to_contain_text("is not there yet")
    expect(page.locator("path.dag-edge")).to_have_count(6)
    # Layers by depth: every edge points right.
    xs = {
        n: float(node(page, n).locator("rect").get_attribute("x"))
        for n in ("fetch", "parse", "report", "publish")
    }
    assert xs["fetch"] < xs["parse"] < xs["report"] < xs["publish"], xs
    expect(page.get_by_role("button", name="Retry validate")).to_be_visible()
    shot(page, "workflow.png")

    # A worker for `reports` arrives: the rest of the graph finishes on the open page.
    stack.start_executor(queues="reports", handlers=HANDLERS)
    expect(node(page, "publish")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#wf-badge")).to_have_text("failed")  # validate stays dead

    node(page, "parse").click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9A-Z]{26}$"))
    family = page.locator("#job-family")
    expect(family.locator("#job-workflow")).to_have_text(wf["id"])
    expect(family.locator("#job-parents")).to_contain_text("fetch")
    expect(family.locator("#job-children")).to_contain_text("report")
    expect(family.locator("#job-children")).to_contain_text("publish")
    shot(page, "job-family.png")
    family.locator("#job-parents").get_by_role("link", name="fetch").click()
    expect(page.locator("#job-children")).to_contain_text("parse")
    page.locator("#job-workflow").click()
    expect(page).to_have_url(f"{ui.url}/workflows/{wf['id']}")


def test_a_blocked_job_page_says_which_parent_it_waits_for(stack: Stack, pages):
    stack.start_api()
    ui = stack.start_ui(TASKYARD_UI_LIVE_INTERVAL_S="0.3")
    with stack.http() as c:
        parent = c.post("/api/v1/jobs", json={"type": "noop", "queue": "later"}).json()
        child = c.post("/api/v1/jobs", json={"type": "noop", "depends_on": [parent["id"]]}).json()
    page = pages.open()
    sign_in(page, ui.url, stack.admin_key)
    page.goto(f"{ui.url}/jobs/{child['id']}")
    banner = page.locator("#waiting-banner")
    expect(banner).to_contain_text("Waiting for its parents")
    expect(banner).to_contain_text(f"{parent['id']} (queued, position 0")
    expect(page.locator("#job-parents")).to_contain_text(parent["id"])
    stack.start_executor(queues="default,later")
    expect(page.locator("#job-badge")).to_have_text("succeeded")
    expect(page.locator("#waiting-banner")).to_have_count(0)


def test_batch_page_progress_failures_and_retry_failed_for_submitters_only(stack: Stack, pages, tmp_path):
    stack.start_api()
    ui = stack.start_ui(TASKYARD_UI_LIVE_INTERVAL_S="0.3")
    stack.start_executor(handlers=HANDLERS, slots=8)
    flag = tmp_path / "fixed"
    jobs = [
        {"type": "fails_until_file", "payload": {"path": str(flag)}, "max_attempts": 1, "name": f"part-{i}"}
        if i in (4, 11, 17)
        else {"type": "echo", "payload": {"part": i}, "name": f"part-{i}"}
        for i in range(24)
    ]
    with stack.http() as c:
        created = c.post("/api/v1/batches", json={"jobs": jobs, "name": "csv-import"})
        assert created.status_code == 201, created.text
        batch_id = created.json()["batch_id"]
        viewer_key = c.post("/api/v1/keys", json={"name": "watcher", "role": "viewer"}).json()["key"]

    viewer = pages.open()
    sign_in(viewer, ui.url, viewer_key)
    viewer.goto(f"{ui.url}/batches/{batch_id}")
    expect(viewer.locator("#batch-summary")).to_contain_text("24 of 24")
    expect(viewer.locator(".failure-group")).to_contain_text("3 × JobError")
    expect(viewer.get_by_role("button", name=re.compile("Retry failed"))).to_have_count(0)
    expect(viewer.get_by_text("Retrying needs a submitter or admin key.")).to_be_visible()

    page = pages.open()
    sign_in(page, ui.url, stack.admin_key)
    page.goto(f"{ui.url}/batches/{batch_id}")
    progress = page.get_by_role("progressbar", name="Jobs ended")
    expect(progress).to_have_attribute("aria-valuenow", "24")
    expect(page.locator("#batch-badge")).to_have_text("ended with failures")
    group = page.locator(".failure-group")
    expect(group.get_by_role("link")).to_have_count(3)
    expect(group).to_contain_text("is not there yet")
    shot(page, "batch.png")

    flag.write_text("ok")
    page.get_by_role("button", name="Retry failed (3)").click()
    expect(page.get_by_text("The failed jobs were queued again.")).to_be_visible()
    expect(page.locator("#batch-badge")).to_have_text("complete")  # live, after the retries ran
    expect(page.locator("#batch-summary")).to_contain_text("24 succeeded")
    expect(page.get_by_text("No job of this batch has failed.")).to_be_visible()
    page.goto(f"{ui.url}/jobs/{created.json()['jobs'][4]['id']}")
    expect(page.locator("#job-batch")).to_have_text(batch_id)
