"""Operations commands: workers, queues (list/pause/resume), doctor."""

import sys
from typing import Any

import click

from ._cli_common import client, print_json
from ._render import table
from ._render_ops import QUEUE_HEADERS, WORKER_HEADERS, check_lines, queue_row, worker_row
from .client import Client
from .errors import TaskyardError

EXIT_PROBLEMS = 1  # doctor found something to fix (or could not reach the API)
API_FIX = "start it (./taskw up) or set TASKYARD_URL"


@click.command()
@click.option("--all", "all_", is_flag=True, help="Also list gone workers (kept for an hour).")
@click.option("--json", "as_json", is_flag=True, help='Print {"workers": [...]}.')
def workers(all_: bool, as_json: bool) -> None:
    """List executors with their health, slots and running jobs."""
    found = [w for w in client().workers() if all_ or w.get("state") != "gone"]
    if as_json:
        print_json({"workers": found})
        return
    if not found:
        click.echo("no workers (start one: python -m taskyard_executor --queues NAME)", err=True)
        return
    click.echo(table(WORKER_HEADERS, [worker_row(w) for w in found]))


def _list_queues(as_json: bool) -> None:
    found = client().queues()
    if as_json:
        print_json({"queues": found})
        return
    if not found:
        click.echo("no queues (a queue appears with its first job)", err=True)
        return
    click.echo(table(QUEUE_HEADERS, [queue_row(q) for q in found]))


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help='Print {"queues": [...]}.')
@click.pass_context
def queues(ctx: click.Context, as_json: bool) -> None:
    """List queues (the default), or pause/resume one (admin)."""
    if ctx.invoked_subcommand is None:
        _list_queues(as_json)


@queues.command("list")
@click.option("--json", "as_json", is_flag=True, help='Print {"queues": [...]}.')
@click.pass_context
def queues_list(ctx: click.Context, as_json: bool) -> None:
    """List queues: depth by priority, oldest wait, rates, workers, slots."""
    _list_queues(as_json or bool(ctx.parent and ctx.parent.params.get("as_json")))


@queues.command("pause")
@click.argument("queue")
def queues_pause(queue: str) -> None:
    """Stop starting jobs from QUEUE; running jobs finish, new ones wait."""
    client().pause_queue(queue)
    click.echo(f"queue {queue} paused (resume: taskyard queues resume {queue})")


@queues.command("resume")
@click.argument("queue")
def queues_resume(queue: str) -> None:
    """Start jobs from a paused QUEUE again."""
    client().resume_queue(queue)
    click.echo(f"queue {queue} resumed")


def _api_check(ty: Client) -> tuple[dict[str, Any], bool]:
    """The `api` line of doctor from GET /readyz, and whether the API answered at all."""
    try:
        ready = ty.readyz()
    except TaskyardError as exc:
        if exc.status_code == 0 and exc.__cause__ is not None:
            reason = str(exc.__cause__) or type(exc.__cause__).__name__
            detail = f"cannot reach {ty.url}: {reason}"
        elif exc.status_code == 0:
            detail = exc.detail
        else:
            detail = f"{ty.url} answered {exc.status_code} {exc.detail}: is it a Taskyard API?"
        return {"name": "api", "ok": False, "detail": detail, "fix": API_FIX}, False
    if ready.get("status") == "ready":
        return {"name": "api", "ok": True, "detail": f"{ty.url} ready", "fix": ""}, True
    problems = "; ".join(f"{k} {v}" for k, v in (ready.get("checks") or {}).items() if v != "ok")
    detail = f"{ty.url} answers but is not ready: {problems or '?'}"
    return {"name": "api", "ok": False, "detail": detail, "fix": "see the checks below"}, True


@click.command()
def doctor() -> None:
    """Check the install (admin): API, NATS, consumers, database, workers.

    Prints ✓/✗ per check with how to fix each problem; exits 0 when all pass, 1 otherwise.
    """
    ty = client()
    api, answered = _api_check(ty)
    checks = [api]
    if not answered:
        click.echo("\n".join(check_lines(checks)))
        sys.exit(EXIT_PROBLEMS)
    try:
        report = ty.doctor()
    except TaskyardError:
        click.echo("\n".join(check_lines(checks)))
        raise  # the usual one-line error: 403 for a non-admin key is exit 3
    checks += [c for c in report.get("checks") or [] if isinstance(c, dict)]
    click.echo("\n".join(check_lines(checks)))
    healthy = report.get("ok", True) is True and all(c.get("ok") for c in checks)
    sys.exit(0 if healthy else EXIT_PROBLEMS)


COMMANDS = [workers, queues, doctor]
