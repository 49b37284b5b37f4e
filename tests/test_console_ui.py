"""The operator's console in a real browser (Playwright on Debian's Chromium): live charts, queue
pages, search, bulk actions by filter, keys, the job log tools, a viewer's read-only view, and
every page at phone width (390 px) without sideways scrolling. No console errors anywhere.

With TASKYARD_SCREENSHOTS=docs/screenshots set, the page tour also writes desktop and phone PNGs.
"""

import os
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402  (after the skip)

from .conftest import create_key
from .stack import ROOT, wait_until
from .test_ui_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, sign_in, start_ui, submit_api

pytestmark = pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)

SCREENSHOTS = os.environ.get("TASKYARD_SCREENSHOTS", "")
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _new_page(browser: Browser, problems: list[str], viewport: dict | None = None) -> Page:
    ctx = browser.new_context(viewport=viewport or {"width": 1280, "height": 900}, color_scheme="light")
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    pg.on(
        "console",
        lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None,
    )
    return pg


@pytest.fixture
def console(browser: Browser):
    """New pages (desktop or phone) whose script and console errors fail the test."""
    problems: list[str] = []
    pages: list[Page] = []

    def make(viewport: dict | None = None) -> Page:
        pages.append(_new_page(browser, problems, viewport))
        return pages[-1]

    yield make
    for pg in pages:
        pg.context.close()
    assert not problems, problems


def _failing_jobs(stack, n: int, queue: str = "etl") -> list[str]:
    with stack.http() as c:
        batch = [
            {"type": "refuses", "queue": queue, "max_attempts": 1, "payload": {"i": i}} for i in range(n)
        ]
        ids = [j["id"] for j in c.post("/api/v1/jobs:batch", json={"jobs": batch}).json()["jobs"]]
    for job_id in ids:
        stack.wait_status(job_id, {"failed", "dead"}, timeout=60)
    return ids


def _chart_total(page: Page, title: str) -> int:
    caption = page.locator("#dash-charts figcaption", has=page.get_by_text(title, exact=True)).first
    return int(caption.locator(".chart-total").inner_text().replace(",", ""))


@pytest.mark.serial  # a bound on time: run alone, after the parallel pass
def test_dashboard_chart_updates_within_5_s_of_a_job_finishing(stack, console):
    ui = start_ui(stack)
    stack.start_executor(queues="default")
    submit_api(stack, type="noop")  # the dashboard shows charts once there are jobs
    page = console()
    sign_in(page, ui, stack.admin_key)
    expect(page.locator("#dash-charts")).to_be_visible()
    wait_until(lambda: _chart_total(page, "Succeeded") >= 1, timeout=30, what="the first job charted")
    before = _chart_total(page, "Succeeded")
    job_id = submit_api(stack, type="noop")
    stack.wait_status(job_id, "succeeded")
    finished = time.monotonic()
    wait_until(
        lambda: _chart_total(page, "Succeeded") == before + 1, timeout=30, what="the chart to count it"
    )
    took = time.monotonic() - finished
    assert took <= 5.0, f"the chart took {took:.1f} s after the job finished"
    assert page.locator("text=Reload the page").count() == 0
    # The other windows are the same charts over 24 h and 7 d.
    page.get_by_role("link", name="24h", exact=True).click()
    expect(page.get_by_role("heading", name="The last 24 hours")).to_be_visible()
    assert _chart_total(page, "Succeeded") >= before + 1


def test_queue_page_and_bulk_retry_of_its_dead_jobs_with_a_confirmed_count(stack, console):
    ui = start_ui(stack)
    executor = stack.start_executor(queues="etl", handlers="handlers_for_tests")
    ids = _failing_jobs(stack, 12)
    executor.terminate()  # the retried jobs stay queued, to be counted
    page = console()
    sign_in(page, ui, stack.admin_key)
    page.goto(f"{ui.url}/queues")
    page.get_by_role("link", name="etl").click()
    expect(page.get_by_role("heading", name="Queue etl")).to_be_visible()
    expect(page.locator("#queue-summary")).to_contain_text("Last 1h")
    expect(page.get_by_role("button", name="Pause queue")).to_be_visible()
    expect(page.locator("#queue-charts")).to_contain_text("PermanentError")
    # Depth over time stacked by priority, and the wait's p50 inside its p95, each with a legend.
    expect(page.locator("#queue-summary .chart-legend")).to_have_text(re.compile(r"high\s*normal\s*low"))
    expect(page.locator("#queue-charts .chart-legend")).to_have_text(re.compile(r"p95\s*p50"))
    # From the jobs list: every failed job of etl with this error, counted first, then retried.
    page.goto(f"{ui.url}/jobs?queue=etl&status=failed&error=PermanentError")
    expect(page.locator("table.jobs-table tbody tr")).to_have_count(12)
    expect(page.locator("table.jobs-table")).to_contain_text("bad input: do not retry")
    page.get_by_role("button", name="Retry all…").click()
    expect(page.locator("#bulk-count")).to_contain_text("12 jobs will be retried")
    with stack.http() as c:  # nothing happened yet
        assert len(c.get("/api/v1/jobs", params={"queue": "etl", "status": "failed"}).json()["jobs"]) == 12
    page.get_by_role("button", name="Retry 12 jobs").click()
    expect(page.locator("#bulk-result")).to_contain_text("12 of 12 jobs retried")
    with stack.http() as c:
        jobs = c.get("/api/v1/jobs", params={"queue": "etl"}).json()["jobs"]
        assert sorted(j["id"] for j in jobs) == sorted(ids)
        assert {(j["status"], j["generation"]) for j in jobs} == {("queued", 1)}
        timeline = c.get(f"/api/v1/jobs/{ids[0]}").json()["timeline"]
        assert [e["data"]["by"] for e in timeline if e["type"] == "bulk_retry"] == ["admin"]
    # A filter that matches nothing changes nothing and says so.
    page.goto(f"{ui.url}/jobs?queue=etl&status=failed")
    expect(page.get_by_text("No jobs match these filters.")).to_be_visible()
    page.goto(f"{ui.url}/queues/etl")
    page.get_by_role("button", name="Retry all dead…").click()
    expect(page.locator("#bulk-result")).to_contain_text("no job matches this filter")
    expect(page.locator("#bulk-result")).to_contain_text("nothing changed")
    expect(page.locator("#bulk-confirm")).to_have_count(0)
    # Cancel by filter, then discard what was cancelled: each counted and confirmed first.
    page.goto(f"{ui.url}/jobs?queue=etl&status=queued")
    page.get_by_role("button", name="Cancel all…").click()
    expect(page.locator("#bulk-count")).to_contain_text("12 jobs will be cancelled")
    page.get_by_role("button", name="Cancel 12 jobs").click()
    expect(page.locator("#bulk-result")).to_contain_text("12 of 12 jobs cancelled")
    page.goto(f"{ui.url}/jobs?queue=etl&status=cancelled")
    page.get_by_role("button", name="Discard all…").click()
    expect(page.locator("#bulk-count")).to_contain_text("12 jobs will be discarded")
    page.get_by_role("button", name="Discard 12 jobs").click()
    expect(page.locator("#bulk-result")).to_contain_text("12 of 12 jobs discarded")
    with stack.http() as c:
        assert c.get("/api/v1/jobs", params={"queue": "etl"}).json()["jobs"] == []
        assert c.get(f"/api/v1/jobs/{ids[0]}").status_code == 404


def test_search_sort_and_the_job_log_tools(stack, console):
    # The finished-range fields take whole minutes: the one before the test began.
    began = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 60))
    ui = start_ui(stack)
    stack.start_executor(queues="default")
    job_id = submit_api(
        stack, type="shell", payload={"command": ["sh", "-c", "echo alpha; echo beta; echo gamma-alpha"]}
    )
    other = submit_api(stack, type="noop", payload={"customer": 42})
    stack.wait_status(job_id, "succeeded")
    stack.wait_status(other, "succeeded")
    page = console()
    sign_in(page, ui, stack.admin_key)
    page.goto(f"{ui.url}/jobs")
    page.get_by_label("Job id").fill(other[:20])
    page.get_by_role("button", name="Find").click()
    expect(page.locator("table.jobs-table tbody tr")).to_have_count(1)
    # Each row has its run time and worker (and the sorted column says so).
    with stack.http() as c:
        ran = c.get(f"/api/v1/jobs/{job_id}").json()
    row = page.locator("table.jobs-table tbody tr", has=page.get_by_text(job_id))
    page.goto(f"{ui.url}/jobs")
    expect(row).to_contain_text(ran["worker_id"])
    expect(row.locator("td.nowrap").first).to_have_text(re.compile(r"^\d+\.\d\d s$"))
    page.get_by_label("Payload contains (JSON)").fill('{"customer": 42}')
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.jobs-table tbody tr")).to_have_count(1)
    expect(page.locator("table.jobs-table")).to_contain_text(other)
    page.get_by_label("Payload contains (JSON)").fill("not json")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("alert")).to_contain_text("payload")
    # Finished within a range (UTC): both jobs finished since the test began, none before it.
    page.goto(f"{ui.url}/jobs")
    page.get_by_label("Finished from").fill(began)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.jobs-table tbody tr")).to_have_count(2)
    page.get_by_label("Finished from").fill("")
    page.get_by_label("Finished before").fill(began)
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No jobs match these filters.")).to_be_visible()
    page.get_by_label("Finished from").fill(began)
    page.get_by_label("Finished before").fill("2000-01-01T00:00")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("alert")).to_contain_text("finished_before")
    page.goto(f"{ui.url}/jobs")
    page.get_by_role("link", name="Finished").click()
    expect(page.locator("th[aria-sort]")).to_contain_text("Finished")
    page.goto(f"{ui.url}/jobs/{job_id}")
    log = page.locator("#log")
    expect(log).to_contain_text("gamma-alpha")
    expect(log.locator(".ln-time").first).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))
    page.get_by_label("Search the log").fill("alpha")
    expect(page.locator("#log-matches")).to_contain_text("2 of")
    expect(log.get_by_text("beta", exact=True)).to_be_hidden()
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the log").click()
    text = Path(download.value.path()).read_text()
    assert "stdout alpha" in text and "stdout gamma-alpha" in text
    # The timeline's details are words, not raw JSON.
    expect(page.locator("#job-timeline .event-data").first).to_be_visible()


def test_keys_page_creates_shows_once_and_revokes(stack, console):
    ui = start_ui(stack)
    page = console()
    sign_in(page, ui, stack.admin_key)
    page.get_by_role("link", name="Keys").click()
    page.get_by_label("Name").fill("ci-bot")
    page.get_by_label("Role").select_option("submitter")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").inner_text()
    assert key.startswith("ty_")
    with stack.http(key) as c:
        assert c.get("/api/v1/whoami").json()["role"] == "submitter"
    page.goto(f"{ui.url}/keys")
    expect(page.locator("#new-key")).to_have_count(0)  # shown once
    row = page.locator("tr", has=page.get_by_text("ci-bot"))
    row.get_by_role("button", name="Revoke").click()
    expect(page.locator(".notice")).to_contain_text("Key revoked")
    with stack.http(key) as c:
        wait_until(lambda: c.get("/api/v1/whoami").status_code == 401, timeout=30, what="the key refused")


def test_a_viewer_sees_the_pages_but_no_action_buttons(stack, console):
    ui = start_ui(stack)
    stack.start_executor(queues="etl", handlers="handlers_for_tests")
    failed = _failing_jobs(stack, 2)
    queued = submit_api(stack, type="noop", queue="idle")  # nobody serves it: it stays cancellable
    viewer = create_key(stack.db_url, "watcher", "viewer")
    page = console()
    sign_in(page, ui, viewer)
    actions = ("Pause", "Pause queue", "Retry all…", "Retry all dead…", "Cancel all…", "Discard all…")
    actions += ("Retry job", "Cancel job", "Send", "Retry selected", "Cancel selected", "Drain", "Stop")
    paths = ("/", "/queues/etl", "/jobs?queue=etl&status=failed", "/queues", "/workers")
    for path in (*paths, f"/jobs/{failed[0]}", f"/jobs/{queued}"):
        page.goto(f"{ui.url}{path}")
        expect(page.locator("main h1")).to_be_visible()
        for name in actions:
            assert page.get_by_role("button", name=name).count() == 0, (path, name)  # "Drain w1" too
    # The same pages as an admin do show them (the names above are the real ones).
    admin = console()
    sign_in(admin, ui, stack.admin_key)
    admin.goto(f"{ui.url}/jobs/{failed[0]}")
    expect(admin.get_by_role("button", name="Retry job", exact=True)).to_be_visible()
    admin.goto(f"{ui.url}/jobs/{queued}")
    expect(admin.get_by_role("button", name="Cancel job", exact=True)).to_be_visible()
    expect(admin.get_by_role("button", name="Send", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Keys")).to_have_count(0)
    with stack.http(viewer) as c:
        flt = {"queue": "etl"}
        assert c.post("/api/v1/jobs:bulk", json={"action": "retry", "filter": flt}).status_code == 403
        assert c.post("/api/v1/queues/etl/pause").status_code == 403
        assert c.post("/api/v1/keys", json={"name": "x", "role": "admin"}).status_code == 403
        assert c.post(f"/api/v1/jobs/{failed[0]}/retry").status_code == 403
        assert c.post(f"/api/v1/jobs/{queued}/cancel").status_code == 403


def _no_sideways_scroll(page: Page, path: str) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{path}: the page is {width} px wide at {PHONE['width']} px"

    def outside() -> list[str] | None:
        """Buttons past the right edge; None when a live update swapped them while being read."""
        boxes = [(b, b.bounding_box()) for b in page.locator("main button:visible").all()]
        if any(box is None for _, box in boxes):
            return None
        return [
            b.inner_text()
            for b, box in boxes
            if box and not (0 <= box["x"] and box["x"] + box["width"] <= PHONE["width"] + 1)
        ]

    for _ in range(20):
        if (past := outside()) is not None:
            break
        page.wait_for_timeout(100)
    assert past == [], (path, past)


def test_every_page_at_desktop_and_phone_width(stack, console):
    ui = start_ui(stack)
    stack.start_executor(queues="default,etl", handlers="handlers_for_tests")
    ok = submit_api(stack, type="shell", payload={"command": ["echo", "hello from taskyard"]})
    failed = _failing_jobs(stack, 3)
    stack.wait_status(ok, "succeeded")
    submit_api(stack, type="noop", queue="idle")  # a queue nobody serves
    paths = {
        "dashboard": "/",
        "queues": "/queues",
        "queue": "/queues/etl",
        "jobs": "/jobs",
        "jobs-search": "/jobs?queue=etl&error=PermanentError",
        "job": f"/jobs/{failed[0]}",
        "job-log": f"/jobs/{ok}",
        "keys": "/keys",
        "workers": "/workers",
        "audit": "/audit",
        "submit": "/submit",
        "schedules": "/schedules",
        "approvals": "/approvals",
    }
    out = ROOT / SCREENSHOTS if SCREENSHOTS else None
    for viewport, suffix in (({"width": 1280, "height": 900}, "desktop"), (PHONE, "phone")):
        page = console(viewport)
        page.goto(f"{ui.url}/login")  # the one page before signing in
        expect(page.get_by_label("API key")).to_be_visible()
        if suffix == "phone":
            _no_sideways_scroll(page, "/login")
        if out:
            page.screenshot(path=str(out / f"console-login-{suffix}.png"), full_page=True)
        sign_in(page, ui, stack.admin_key)
        for name, path in paths.items():
            page.goto(f"{ui.url}{path}")
            expect(page.locator("main h1")).to_be_visible()
            if suffix == "phone":
                _no_sideways_scroll(page, path)
            elif name == "jobs-search":  # every column of the jobs table in view, the error last
                box = page.locator("table.jobs-table thead th").last.bounding_box()
                assert box and box["x"] + box["width"] <= 1280 - 16, box
            if out:
                out.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out / f"console-{name}-{suffix}.png"), full_page=True)
        # The bulk action's confirmation (a POST's answer: reached by its button).
        page.goto(f"{ui.url}{paths['jobs-search']}")
        page.get_by_role("button", name="Retry all…").click()
        expect(page.locator("#bulk-count")).to_contain_text("3 jobs will be retried")
        if suffix == "phone":
            _no_sideways_scroll(page, "/bulk")
        if out:
            page.screenshot(path=str(out / f"console-bulk-confirm-{suffix}.png"), full_page=True)
    # At phone width the dashboard's queue table keeps its Pause button on screen.
    page.goto(f"{ui.url}/")
    pause = page.get_by_role("button", name="Pause queue etl")
    expect(pause).to_be_visible()

    def on_screen() -> bool:  # read again if a live update swapped the table meanwhile
        box = pause.bounding_box()
        return bool(box) and 0 <= box["x"] and box["x"] + box["width"] <= PHONE["width"]

    wait_until(on_screen, timeout=30, what="the Pause button within 390 px")
