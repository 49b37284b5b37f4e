"""Operations commands: workers, queues (list/pause/resume), doctor."""

import sys
from typing import Any

import click

from ._cli_common import client, print_json
from ._render import short_time, table
from ._render_ops import QUEUE_HEADERS, WORKER_HEADERS, check_lines, queue_row, worker_row
from .client import Client
from .errors import TaskyardError

EXIT_PROBLEMS = 1  # doctor found something to fix (or could not reach the API)
API_FIX = "start it (./taskw up) or set TASKYARD_URL"


@click.group(invoke_without_command=True)
@click.option("--all", "all_", is_flag=True, help="Also list gone workers (kept for an hour).")
@click.option("--json", "as_json", is_flag=True, help='Print {"workers": [...]}.')
@click.pass_context
def workers(ctx: click.Context, all_: bool, as_json: bool) -> None:
    """List executors with their health, slots and running jobs (the default), or drain/stop one (admin)."""
    if ctx.invoked_subcommand is None:
        _list_workers(all_, as_json)


@workers.command("drain")
@click.argument("worker_id", metavar="ID")
def workers_drain(worker_id: str) -> None:
    """Stop ID pulling; running jobs finish within its grace or are handed back (no attempt spent); it exits."""
    client().drain_worker(worker_id)
    click.echo(f"worker {worker_id} draining: it shows `draining`, then `gone` (taskyard workers --all)")


@workers.command("stop")
@click.argument("worker_id", metavar="ID")
def workers_stop(worker_id: str) -> None:
    """Hand ID's running jobs back to their queues at once (no attempt spent); it exits."""
    client().stop_worker(worker_id)
    click.echo(f"worker {worker_id} stopping: its running jobs go back to their queues")


def _list_workers(all_: bool, as_json: bool) -> None:
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


def _one_or_all(queue: str | None, all_: bool) -> str | None:
    if bool(queue) == all_:
        raise click.UsageError("name one QUEUE, or --all")
    return queue


@queues.command("pause")
@click.argument("queue", required=False)
@click.option("--all", "all_", is_flag=True, help="Pause every queue.")
def queues_pause(queue: str | None, all_: bool) -> None:
    """Stop starting jobs from QUEUE (or all); running jobs finish, new ones wait."""
    if _one_or_all(queue, all_) is None:
        done = client().pause_all(True)
        click.echo(f"paused {len(done['queues'])} queue(s) (resume: taskyard queues resume --all)")
        return
    client().pause_queue(str(queue))
    click.echo(f"queue {queue} paused (resume: taskyard queues resume {queue})")


@queues.command("resume")
@click.argument("queue", required=False)
@click.option("--all", "all_", is_flag=True, help="Resume every queue.")
def queues_resume(queue: str | None, all_: bool) -> None:
    """Start jobs from a paused QUEUE (or all) again."""
    if _one_or_all(queue, all_) is None:
        done = client().pause_all(False)
        click.echo(f"resumed {len(done['queues'])} queue(s)")
        return
    client().resume_queue(str(queue))
    click.echo(f"queue {queue} resumed")


@click.command()
@click.option("--actor", metavar="NAME", help="A key's name or id.")
@click.option("--action", metavar="ACTION", help="e.g. worker.drain, or a prefix like key.")
@click.option("--since", metavar="TIME", help="Epoch seconds or ISO 8601.")
@click.option("--refused", is_flag=True, help="Only refused attempts (403).")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help='Print {"events": [...], "next_cursor": ...}.')
def audit(
    actor: str | None, action: str | None, since: str | None, refused: bool, limit: int, as_json: bool
) -> None:
    """Admin actions and refused attempts at them, newest first (admin)."""
    page = client().audit(
        actor=actor, action=action, since=since, outcome="refused" if refused else None, limit=limit
    )
    if as_json:
        print_json(page)
        return
    rows = [
        [short_time(e.get("at")), str((e.get("actor") or {}).get("name")), str(e.get("action")),
         str(e.get("target") or "-"), str(e.get("outcome")), str(e.get("client") or "-")]
        for e in page.get("events") or []
    ]  # fmt: skip
    click.echo(table(["AT (UTC)", "ACTOR", "ACTION", "TARGET", "OUTCOME", "FROM"], rows))


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
@click.option("--json", "as_json", is_flag=True, help='Print {"ok": ..., "checks": [...]}.')
def doctor(as_json: bool) -> None:
    """Check the install (admin): API, NATS, consumers, database, workers.

    Prints ✓/✗ per check with how to fix each problem; exits 0 when all pass, 1 otherwise.
    """
    ty = client()
    api, answered = _api_check(ty)
    checks = [api]
    if not answered:
        if as_json:
            print_json({"ok": False, "checks": checks})
        else:
            click.echo("\n".join(check_lines(checks)))
        sys.exit(EXIT_PROBLEMS)
    try:
        report = ty.doctor()
    except TaskyardError:
        click.echo("\n".join(check_lines(checks)))
        raise  # the usual one-line error: 403 for a non-admin key is exit 3
    checks += [c for c in report.get("checks") or [] if isinstance(c, dict)]
    healthy = report.get("ok", True) is True and all(c.get("ok") for c in checks)
    if as_json:
        print_json({"ok": healthy, "checks": checks})
    else:
        click.echo("\n".join(check_lines(checks)))
    sys.exit(0 if healthy else EXIT_PROBLEMS)


COMMANDS = [workers, queues, doctor, audit]
