"""A job's conversation in the web UI (Playwright on Debian's Chromium, the real stack): the job
page and the approvals inbox show the thread live, and their boxes answer the job's questions."""

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .stack import ROOT
from .test_ui_browser import browser, page, sign_in, start_ui, submit_api  # noqa: F401 - fixtures used by name

pytestmark = pytest.mark.one_database(
    "sqlite", why="a browser page over the REST API, whose SQL the API tests run on both databases"
)

SHOTS = Path(os.environ.get("TASKYARD_SCREENSHOTS") or "")


def test_job_page_and_inbox_show_the_thread_live_and_reply_boxes_answer(stack, page: Page, tmp_path):  # noqa: F811 - the fixture
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    ui = start_ui(stack)
    stack.start_executor(handlers="handlers_for_tests")
    sign_in(page, ui, stack.admin_key)
    questions = ["Which HTTP library should I use?", "Which version?", "Open the pull request now?"]
    job_id = submit_api(
        stack, type="converse", payload={"answers_file": str(tmp_path / "a"), "questions": questions}
    )

    page.goto(f"{ui.url}/jobs/{job_id}")
    thread = page.locator("#job-thread")
    expect(thread).to_contain_text("Starting: I will ask three things.")
    expect(thread).to_contain_text(questions[0])
    expect(thread.locator(".thread-open")).to_contain_text("Waiting for an answer to q1")
    # The job page's box: the answer goes through the checkpoint path; what follows arrives live.
    page.get_by_role("textbox", name="Message").fill("httpx")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="Message sent.")).to_be_visible()
    expect(thread).to_contain_text("Noted answer 1: httpx")
    expect(thread).to_contain_text(questions[1])  # said and asked after the page loaded

    # The inbox shows the conversation on the question's card; its answer box replies.
    page.goto(f"{ui.url}/approvals")
    card = page.locator("article.card").filter(has_text=questions[1])
    expect(card.locator(".thread")).to_contain_text("httpx")
    card.get_by_label("Answer", exact=True).fill("0.28")
    card.get_by_role("button", name="Send answer").click()
    expect(page.get_by_text("Answer sent: the job continues.")).to_be_visible()
    card3 = page.locator("article.card").filter(has_text=questions[2])
    for _ in range(100):  # the third question arrives once the job ran again
        if card3.count():
            break
        page.wait_for_timeout(300)
        page.reload()
    expect(card3.locator(".thread")).to_contain_text("Noted answer 2: 0.28")
    if str(SHOTS) not in ("", "."):
        out = SHOTS if SHOTS.is_absolute() else ROOT / SHOTS
        out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=out / "approvals-conversation.png", full_page=True)
    # Someone else answers meanwhile (the API): the open card's conversation follows live.
    with stack.http() as c:
        r = c.post(f"/api/v1/jobs/{job_id}/messages", json={"text": "yes"})
        assert r.status_code == 201, r.text
    expect(card3.locator(".thread")).to_contain_text("Noted answer 3: yes")

    stack.wait_status(job_id, "succeeded")
    page.goto(f"{ui.url}/jobs/{job_id}")
    expect(thread.locator(".msg")).to_have_count(10)
    expect(thread).to_contain_text("the conversation is closed")
    expect(page.locator("#thread-text")).to_have_count(0)  # no box on an ended job
    if str(SHOTS) not in ("", "."):
        page.locator("#thread").screenshot(path=out / "job-conversation.png")
    assert not console, f"console errors: {console}"
