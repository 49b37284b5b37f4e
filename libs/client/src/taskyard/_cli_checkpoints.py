"""Approvals inbox commands: checkpoints, approve, reject, answer."""

import click

from ._calls import CHECKPOINT_STATUSES
from ._cli_common import BadInput, client, print_json
from ._render import table
from ._render_checkpoints import CHECKPOINT_HEADERS, checkpoint_row, decision_line, parse_answer


def _reason(reason: str | None, required: bool = False) -> str | None:
    if reason is None or reason.strip():
        return reason
    if required:
        raise BadInput("--reason: must not be empty")
    return None


@click.command()
@click.option(
    "--status",
    type=click.Choice([*CHECKPOINT_STATUSES, "all"]),
    default="pending",
    show_default=True,
    help="Which checkpoints to list.",
)
@click.option("--job", "job_id", metavar="ID", help="Only this job's checkpoints.")
@click.option("--limit", type=click.IntRange(1, 500), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help='Print {"checkpoints": [...]}.')
def checkpoints(status: str, job_id: str | None, limit: int, as_json: bool) -> None:
    """List checkpoints awaiting a decision (others with --status).

    Approvals and questions, newest first. Decide one with `taskyard approve ID`, `taskyard reject ID --reason R` or `taskyard answer ID ANSWER`.
    """
    found = client().checkpoints(status, job_id, limit)
    if as_json:
        print_json({"checkpoints": found})
        return
    if not found:
        click.echo("no checkpoints" if status == "all" else f"no {status} checkpoints", err=True)
        return
    click.echo(table(CHECKPOINT_HEADERS, [checkpoint_row(ck) for ck in found]))


@click.command()
@click.argument("ck_id", metavar="ID")
@click.option("--reason", metavar="TEXT", help="Why (recorded with the decision).")
def approve(ck_id: str, reason: str | None) -> None:
    """Approve a pending checkpoint; its job resumes."""
    click.echo(decision_line(client().approve(ck_id, _reason(reason))))


@click.command()
@click.argument("ck_id", metavar="ID")
@click.option("--reason", required=True, metavar="TEXT", help="Why (required; the job fails with it).")
def reject(ck_id: str, reason: str) -> None:
    """Reject a pending checkpoint; its job fails with the reason (unless its handler takes rejections)."""
    click.echo(decision_line(client().reject(ck_id, _reason(reason, required=True) or "")))


@click.command()
@click.argument("ck_id", metavar="ID")
@click.argument("answer_text", metavar="ANSWER")
@click.option("--reason", metavar="TEXT", help="Why (recorded with the answer).")
def answer(ck_id: str, answer_text: str, reason: str | None) -> None:
    """Answer a pending question; its job resumes with the answer.

    ANSWER is taken as JSON when it parses (42, true, {"n": 1}, '"42"' for the string), else as text.
    """
    click.echo(decision_line(client().answer(ck_id, parse_answer(answer_text), _reason(reason))))


COMMANDS = [checkpoints, approve, reject, answer]
