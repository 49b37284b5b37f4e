"""`taskyard chat ID`: follow a job's thread on a terminal and reply from stdin."""

import json
import queue
import sys
import threading

import click

from ._cli_common import EXIT_REFUSED, client, print_json
from ._render_chat import message_line, question_prompt
from .errors import TaskyardError

FINAL = frozenset({"succeeded", "failed", "cancelled", "dead", "skipped"})
PAGE = 500


def _read_stdin(lines: "queue.Queue[str | None]") -> None:
    for line in sys.stdin:
        lines.put(line.rstrip("\r\n"))
    lines.put(None)  # end of input: keep following, stop reading


@click.command()
@click.argument("job_id", metavar="ID")
@click.option(
    "--say", "say_text", metavar="TEXT", help="Send TEXT to the thread (answers an open question) and exit."
)
@click.option(
    "--reply-to", metavar="CHECKPOINT", help="With --say: the question answered (default: the open one)."
)
@click.option("--no-follow", is_flag=True, help="Print the thread so far and exit.")
@click.option("--no-input", is_flag=True, help="Follow without reading replies from stdin.")
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 60),
    default=1.0,
    show_default=True,
    help="Seconds between polls.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message (JSON lines).")
def chat(
    job_id: str,
    say_text: str | None,
    reply_to: str | None,
    no_follow: bool,
    no_input: bool,
    interval: float,
    as_json: bool,
) -> None:
    """Follow a job's conversation and reply.

    Prints the thread (what the job says and asks, answers, people's messages), then new messages
    as they come, until the job ends. Each line typed on stdin is sent: while the job waits on a
    question it answers it (if your key may answer it), else it is a plain message. Ctrl-D stops
    reading, Ctrl-C stops following. With --say, sends one message and exits.
    """
    ty = client()
    if say_text is not None:
        sent = ty.post_message(job_id, say_text, reply_to)
        if as_json:
            print_json(sent)
        else:
            click.echo(message_line(sent, {sent["checkpoint_id"]} if sent.get("checkpoint_id") else set()))
        return
    asked: set[str] = set()
    lines: queue.Queue[str | None] = queue.Queue()
    reading = not (no_follow or no_input)
    if reading:
        threading.Thread(target=_read_stdin, args=(lines,), daemon=True).start()
    after, prompted = 0, None
    try:
        while True:
            body = ty.messages(job_id, after, PAGE)
            for m in body["messages"]:
                click.echo(json.dumps(m, ensure_ascii=False) if as_json else message_line(m, asked))
                after = m["id"]
            status, question = body["job_status"], body.get("open_question")
            if status in FINAL:
                click.echo(f"-- job {job_id} {status}: the conversation is closed", err=True)
                return
            if len(body["messages"]) == PAGE:
                continue  # a long thread: the next page at once
            if no_follow:
                return
            if question and question["id"] != prompted and reading:
                click.echo(question_prompt(question), err=True)
                prompted = question["id"]
            _send_typed(ty, job_id, lines, interval)
    except KeyboardInterrupt:
        return


def _send_typed(ty, job_id: str, lines: "queue.Queue[str | None]", interval: float) -> None:  # noqa: ANN001
    """Wait up to `interval` for typed lines; send each (errors are shown, the chat goes on)."""
    try:
        line = lines.get(timeout=interval)
    except queue.Empty:
        return
    while True:
        if line is not None and line.strip():
            try:
                ty.post_message(job_id, line)
            except TaskyardError as exc:
                if exc.status_code == 0 or exc.status_code >= 500:
                    raise
                click.echo(f"error: {exc.status_code} {exc.detail}", err=True)
                if exc.status_code == 409 and "ended" in exc.detail:
                    sys.exit(EXIT_REFUSED)
        try:
            line = lines.get_nowait()
        except queue.Empty:
            return


COMMANDS = [chat]
