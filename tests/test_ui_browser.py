"""The web UI in a real browser (Playwright driving Debian's Chromium) against the real stack.

Needs /usr/bin/chromium (`apt-get install -y chromium`); no browser is ever downloaded. Without
it these tests skip and say so. With TASKYARD_SCREENSHOTS=docs/screenshots set, the screenshot
test also runs and (re)writes the PNGs of every page there.
"""

import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from .stack import ROOT, Service, Stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = os.environ.get("TASKYARD_SCREENSHOTS", "")

if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"web UI browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

WAIT_MS = 30_000  # generous: the whole stack runs on one (possibly busy) CI machine
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda err: errors.append(str(err)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def start_ui(stack: Stack) -> Service:
    stack.start_api()
    return stack.start_ui(TASKYARD_UI_LIVE_INTERVAL_S="0.3")


def sign_in(page: Page, ui: Service, key: str) -> None:
    page.goto(f"{ui.url}/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard", level=1)).to_be_visible()


def submit_api(stack: Stack, **body) -> str:
    with stack.http() as c:
        r = c.post("/api/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]


def job_id_from(page: Page) -> str:
    m = re.search(r"/jobs/([0-9A-Z]{26})", page.url)
    assert m, page.url
    return m.group(1)


@pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)
def test_sign_in_keyboard_and_sign_out(stack, page: Page):
    ui = start_ui(stack)
    page.goto(ui.url)  # not signed in: sent to the sign-in form
    expect(page).to_have_url(re.compile(r"/login\?next=%2F"))
    page.get_by_label("API key").fill("ty_not_a_real_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#api_key-error")).to_contain_text("not accepted")
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")

    # Keyboard only: type the key, Enter submits.
    page.get_by_label("API key").fill(stack.admin_key)
    page.get_by_label("API key").press("Enter")
    expect(page.get_by_role("heading", name="Dashboard", level=1)).to_be_visible()
    expect(page.locator(".who")).to_contain_text("admin")
    cookie = next(c for c in page.context.cookies() if c["name"] == "taskyard_key")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # The first Tab reaches the skip link, which moves focus to the main content.
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()

    # Every page of the main navigation opens (the approvals inbox is empty on a fresh install).
    for name, heading in [("Jobs", "Jobs"), ("Workers", "Workers"), ("Submit", "Submit a job")]:
        page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()
        expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Approvals").click()
    expect(page.get_by_role("heading", name="No pending approvals")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    page.goto(f"{ui.url}/jobs")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fjobs"))


@pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)
def test_fresh_install_getting_started_then_example_job_waits_for_a_worker(stack, page: Page):
    ui = start_ui(stack)
    sign_in(page, ui, stack.admin_key)
    panel = page.get_by_role("region", name="Getting started")
    expect(panel).to_be_visible()
    expect(panel).to_contain_text("taskyard run -- echo hello")
    expect(panel).to_contain_text("python -m taskyard_executor --queues default")
    expect(page.get_by_text("No worker has reported yet")).to_be_visible()

    panel.get_by_role("button", name="Run an example job").click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9A-Z]{26}"))
    job_id = job_id_from(page)
    # No executor yet: the banner says why the job waits, in words, with the command to fix it.
    banner = page.locator("#waiting-banner")
    expect(banner).to_contain_text("No worker is serving queue default")
    expect(banner).to_contain_text("python -m taskyard_executor --queues default")
    expect(page.locator("#queue-position")).to_contain_text("next in line")
    expect(page.locator("#queue-eta")).to_contain_text("not until a worker serves queue default")

    # A worker starts: without a reload the page shows the job run, its log and its result.
    stack.start_executor()
    expect(page.locator("#job-badge")).to_have_text("succeeded")
    expect(page.locator("#waiting-banner")).to_have_count(0)
    expect(page.locator("#log")).to_contain_text("hello from taskyard")
    expect(page.get_by_role("heading", name="Result")).to_be_visible()
    expect(page.locator("#job-timeline")).to_contain_text("succeeded")
    assert stack.wait_status(job_id, "succeeded")["worker_id"]

    # Back on the dashboard the panel is gone and the job is counted.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("region", name="Getting started")).to_have_count(0)
    expect(page.locator("#chart-1-summary")).to_contain_text("1 job in the last 1 h")
    expect(page.get_by_role("region", name="Latest jobs, newest first")).to_contain_text(job_id)


@pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)
def test_submit_a_shell_job_and_follow_its_log_live(stack, page: Page):
    ui = start_ui(stack)
    stack.start_executor()
    sign_in(page, ui, stack.admin_key)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Submit").click()
    page.get_by_label("Built-in type").select_option("shell")
    script = "for i in 1 2 3 4 5 6 7 8; do echo out-$i; echo err-$i >&2; sleep 0.8; done"
    page.get_by_label("Payload (JSON)").fill(json.dumps({"command": script, "shell": True}))
    page.get_by_label("Labels (optional)").fill("team=data")
    page.get_by_role("button", name="Submit job").click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9A-Z]{26}\?done=submitted"))
    expect(page.get_by_text("Job submitted.")).to_be_visible()
    job_id = job_id_from(page)

    log = page.locator("#log")
    expect(log.locator(".ln-stdout", has_text="out-1")).to_be_visible()
    # The first lines are on the page while the job is still printing the rest.
    expect(page.locator("#job-badge")).to_have_text("running")
    assert "out-8" not in log.inner_text()
    stderr = log.locator(".ln-stderr", has_text="err-1")
    expect(stderr).to_be_visible()
    expect(stderr.locator(".ln-tag")).to_have_text("stderr")
    assert stderr.evaluate("el => getComputedStyle(el).color") != log.locator(".ln-stdout").first.evaluate(
        "el => getComputedStyle(el).color"
    )

    # It finishes: status, result and the end of the log, all without a reload.
    expect(log).to_contain_text("out-8", timeout=60_000)
    expect(page.locator("#job-badge")).to_have_text("succeeded")
    expect(page.locator("#log-status")).to_contain_text("Job finished (succeeded). 16 line(s)")
    expect(page.get_by_role("heading", name="Result")).to_be_visible()
    expect(page.locator("#job-live")).to_contain_text("team=data")
    assert stack.wait_status(job_id, "succeeded")["labels"] == {"team": "data"}


@pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)
def test_queued_job_banner_names_the_missing_worker_then_it_runs(stack, page: Page):
    ui = start_ui(stack)
    sign_in(page, ui, stack.admin_key)
    first = submit_api(stack, type="shell", payload={"command": ["echo", "first report"]}, queue="reports")
    second = submit_api(stack, type="shell", payload={"command": ["echo", "second report"]}, queue="reports")
    page.goto(f"{ui.url}/jobs/{second}")
    banner = page.locator("#waiting-banner")
    expect(banner.get_by_role("heading")).to_contain_text("no worker serves queue reports")
    expect(banner).to_contain_text(
        "No worker is serving queue reports. Start one with python -m taskyard_executor --queues reports"
    )
    expect(page.locator("#queue-position")).to_contain_text("1 job ahead of it")

    stack.start_executor(queues="reports")
    expect(page.locator("#job-badge")).to_have_text("succeeded")
    expect(banner).to_have_count(0)
    expect(page.locator("#log")).to_contain_text("second report")
    assert stack.wait_status(first, "succeeded")


@pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)
def test_workers_page_shows_a_stopped_worker_as_gone(stack, page: Page):
    ui = start_ui(stack)
    executor = stack.start_executor(queues="default,etl", slots=3)
    sign_in(page, ui, stack.admin_key)
    with stack.http() as c:
        deadline = time.monotonic() + 30
        while not (workers := c.get("/api/v1/workers").json()["workers"]):
            assert time.monotonic() < deadline, "the executor never heartbeated"
            time.sleep(0.2)
    worker_id = workers[0]["id"]
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Workers").click()
    row = page.locator(f"tr[id='worker-{worker_id}']")
    expect(row.locator(".badge")).to_have_text("healthy")
    expect(row).to_contain_text("0 / 3")
    expect(row).to_contain_text("etl")

    assert executor.terminate() == 0
    expect(row.locator(".badge")).to_have_text("gone")
    expect(row).to_have_attribute("data-state", "gone")
    expect(page.locator("#workers-table")).to_contain_text("1 gone")


@pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)
def test_bad_json_in_the_submit_form_is_reported_next_to_the_field(stack, page: Page):
    ui = start_ui(stack)
    sign_in(page, ui, stack.admin_key)
    page.goto(f"{ui.url}/submit")
    payload = page.get_by_label("Payload (JSON)")
    payload.fill('{"command": "echo hi",}')
    page.get_by_role("button", name="Submit job").click()
    # Checked in the browser: no round trip, the message sits under the field and names it.
    error = page.locator("#payload-error")
    expect(error).to_contain_text("Payload is not valid JSON")
    expect(payload).to_have_attribute("aria-invalid", "true")
    expect(payload).to_be_focused()
    expect(page).to_have_url(f"{ui.url}/submit")
    assert "payload-error" in payload.get_attribute("aria-describedby")
    payload.fill('{"command": "echo hi"}')
    expect(error).to_be_empty()

    # Checked again on the server (a browser without JavaScript), naming the field and the position.
    r = page.request.post(
        f"{ui.url}/submit",
        form={"type": "shell", "payload": '{"command": ', "queue": "default", "priority": "normal"},
    )
    assert r.status == 422
    assert re.search(r'id="payload-error"[^>]*>Payload is not valid JSON: .*line 1, column 13', r.text())

    # Valid JSON the API rejects: its message lands next to the payload, naming the inner field.
    page.get_by_label("Built-in type").select_option("shell")
    payload.fill('{"cmd": "echo hi"}')
    page.get_by_role("button", name="Submit job").click()
    expect(error).to_contain_text("payload.command")
    expect(page.locator("#form-summary")).to_contain_text("Payload")
    expect(payload).to_have_value('{"cmd": "echo hi"}')  # what was typed is kept
    with stack.http() as c:
        assert c.get("/api/v1/jobs").json()["jobs"] == []


@pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)
def test_jobs_list_filters_search_pages_and_bulk_actions(stack, page: Page):
    ui = start_ui(stack)
    with stack.http() as c:
        jobs = [{"type": "noop", "queue": "reports", "labels": {"team": "web"}} for _ in range(55)]
        jobs += [{"type": "noop", "queue": "other"}]
        r = c.post("/api/v1/jobs:batch", json={"jobs": jobs})
        assert r.status_code == 201, r.text
        ids = [j["id"] for j in r.json()["jobs"]]
    sign_in(page, ui, stack.admin_key)
    page.goto(f"{ui.url}/jobs")
    table = page.get_by_role("region", name=re.compile("^Jobs, newest first"))
    expect(table.locator("tbody tr")).to_have_count(50)  # one page, never everything
    page.get_by_role("link", name="Next page →").click()
    expect(table.locator("tbody tr")).to_have_count(6)
    expect(page.get_by_role("link", name="← First page")).to_be_visible()

    page.get_by_label("Queue", exact=True).fill("other")
    page.get_by_role("button", name="Filter").click()
    table = page.get_by_role("region", name=re.compile("^Jobs, newest first \\(filtered\\)"))
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table).to_contain_text(ids[-1])
    page.goto(f"{ui.url}/jobs?label=team%3Dweb&since=1h&status=queued")
    expect(page.get_by_role("region", name=re.compile("^Jobs")).locator("tbody tr")).to_have_count(50)

    # Search by id: the start of an id lists the matches; the whole id opens the job.
    page.get_by_label("Job id").fill(ids[3][:25])
    page.get_by_role("button", name="Find").click()
    found = page.get_by_role("region", name=re.compile("^Jobs whose id starts with"))
    expect(found).to_contain_text(ids[3])
    page.get_by_label("Job id").fill(ids[3])
    page.get_by_role("button", name="Find").click()
    expect(page).to_have_url(f"{ui.url}/jobs/{ids[3]}")

    # Bulk: select a page of jobs with the keyboard-reachable checkboxes, cancel, then retry them.
    page.goto(f"{ui.url}/jobs?queue=reports")
    page.get_by_label("Select all jobs on this page").check()
    expect(page.locator("#bulk-count")).to_have_text("50 selected")
    page.get_by_role("button", name="Cancel selected").click()
    expect(page.get_by_role("status").filter(has_text="Cancelled: 50 jobs.")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/jobs\?queue=reports&bulk=cancel&ok=50"))
    page.goto(f"{ui.url}/jobs")
    page.get_by_label(f"Select job {ids[55]}").check()  # queued: cannot be retried
    page.get_by_label(f"Select job {ids[54]}").check()  # cancelled above
    page.get_by_role("button", name="Retry selected").click()
    expect(page.get_by_role("status").filter(has_text="Queued again: 1 job.")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text(
        "1 job was not retried: 1 not in a state that allows it"
    )
    assert stack.wait_status(ids[54], "queued")
    assert stack.wait_status(ids[55], "queued")
    assert stack.wait_status(ids[10], "cancelled")
    assert stack.wait_status(ids[0], "queued")  # older than the page that was cancelled


@pytest.mark.serial  # a bound on time: run alone, after the parallel pass
@pytest.mark.slow
def test_ui_stays_fast_with_10000_jobs(stack):
    """Pages read one page of jobs from the API, never the whole table."""
    ui = start_ui(stack)
    with stack.http() as c:
        c.timeout = httpx.Timeout(120)
        batch = [{"type": "noop", "queue": "bulk", "payload": {"n": i}} for i in range(10_000)]
        assert c.post("/api/v1/jobs:batch", json={"jobs": batch}).status_code == 201
    cookies = {"taskyard_key": stack.admin_key}
    with httpx.Client(base_url=ui.url, cookies=cookies, timeout=30) as c:
        for path in ["/", "/jobs", "/jobs?queue=bulk&status=queued", "/jobs?id=0", "/workers"]:
            took = []
            for _ in range(3):  # the best of three: the API is still publishing the batch meanwhile
                started = time.monotonic()
                r = c.get(path)
                took.append(time.monotonic() - started)
                assert r.status_code == 200, (path, r.text[:500])
                assert len(re.findall(r'<th scope="row"><a href="/jobs/', r.text)) <= 50
            assert min(took) < 1.0, f"{path} took {min(took):.2f}s at best"
        # The queue depth comes from /queues (JetStream's count): the UI never counts jobs itself.
        deadline = time.monotonic() + 60
        while "10,000" not in c.get("/").text:
            assert time.monotonic() < deadline, "the dashboard never showed the 10,000 queued jobs"
            time.sleep(0.5)


@pytest.mark.skipif(not SCREENSHOTS, reason="set TASKYARD_SCREENSHOTS=docs/screenshots to (re)write them")
@pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)
def test_screenshots_of_every_page(stack, page: Page):
    """Real data on every page, photographed for the README (not part of normal runs)."""
    out = Path(SCREENSHOTS)
    out = out if out.is_absolute() else ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    ui = start_ui(stack)
    stack.start_executor(queues="default", slots=4)
    etl = stack.start_executor(queues="default,etl", slots=2)

    page.goto(f"{ui.url}/login")
    page.get_by_label("API key").fill("ty_example_key")
    page.screenshot(path=out / "login.png")
    sign_in(page, ui, stack.admin_key)

    with stack.http() as c:
        for round_ in range(4):
            batch = [
                {"type": "noop", "payload": {"n": i}, "labels": {"team": "web" if i % 3 else "data"}}
                for i in range(12 + 6 * round_)
            ]
            batch += [{"type": "sleep", "payload": {"seconds": 0.5}, "priority": "high"} for _ in range(3)]
            batch += [
                {
                    "type": "shell",
                    "payload": {
                        "command": "echo loading; echo 'disk quota exceeded' >&2; exit 3",
                        "shell": True,
                    },
                    "max_attempts": 1,
                    "labels": {"team": "data"},
                }
                for _ in range(round_ + 1)
            ]
            assert c.post("/api/v1/jobs:batch", json={"jobs": batch}).status_code == 201
            time.sleep(30 if round_ < 3 else 1)  # spread over minutes: several bars in the charts
    etl.terminate()
    script = (
        'for i in $(seq 1 120); do echo "processing chunk $i of 120"; '
        'if [ $((i % 3)) = 0 ]; then echo "warning: chunk $i retried once" >&2; fi; sleep 0.5; done'
    )
    running = submit_api(
        stack,
        type="shell",
        payload={"command": script, "shell": True},
        labels={"team": "data", "kind": "etl"},
    )
    for n in range(3):
        waiting = submit_api(
            stack,
            type="shell",
            payload={"command": ["echo", f"report {n}"]},
            queue="reports",
            priority="high" if n == 0 else "normal",
        )

    # Jobs waiting for a person (shell scripts ask through checkpoint_cli), when the API has them.
    ask = '"$TASKYARD_PYTHON" -m taskyard_executor.checkpoint_cli'
    approval = (
        f"echo 'migration ready'; {ask} apply-migration --message 'Apply migration 0042 to production?' "
        """--data '{"tables": ["jobs", "job_events"], "rows_touched": 1840211, "reversible": true}' """
        "--timeout 4h || exit 1; echo applied"
    )
    question = f"{ask} rollout-region --question --message 'Which region goes first?' --choices eu-west,us-east,ap-south"
    for command in (approval, question):
        submit_api(
            stack, type="shell", payload={"command": command, "shell": True}, labels={"team": "platform"}
        )
    with stack.http() as c:
        deadline = time.monotonic() + 30
        while (r := c.get("/api/v1/checkpoints", params={"status": "pending"})).status_code == 200:
            if len(r.json()["checkpoints"]) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.3)

    page.goto(ui.url)
    expect(page.locator("#dash-workers")).to_contain_text("gone")
    page.wait_for_timeout(1500)
    page.screenshot(path=out / "dashboard.png", full_page=True)

    page.goto(f"{ui.url}/jobs")
    page.screenshot(path=out / "jobs.png")

    page.goto(f"{ui.url}/jobs/{running}")
    expect(page.locator("#log")).to_contain_text("chunk 12 of 120")
    page.screenshot(path=out / "job.png", full_page=True)

    page.goto(f"{ui.url}/jobs/{waiting}")
    expect(page.locator("#waiting-banner")).to_contain_text("No worker is serving queue reports")
    page.screenshot(path=out / "job-queued.png")

    page.goto(f"{ui.url}/workers")
    expect(page.locator("#workers-table")).to_contain_text("gone")
    page.screenshot(path=out / "workers.png")

    page.goto(f"{ui.url}/approvals")
    page.screenshot(path=out / "approvals.png", full_page=True)

    page.goto(f"{ui.url}/submit")
    page.get_by_label("Built-in type").select_option("shell")
    page.get_by_role("button", name="Insert an example payload").click()
    page.get_by_label("Labels (optional)").fill("team=data")
    page.screenshot(path=out / "submit.png")

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{ui.url}/jobs/{waiting}")
    page.screenshot(path=out / "job-queued-phone.png")
    for name in ("dashboard", "jobs", "job", "job-queued", "workers", "approvals", "submit", "login"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
