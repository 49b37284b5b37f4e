"""Work made of many jobs: `taskyard workflow ...` (a DAG from a spec file) and `taskyard batch ...`
(one shell job per file of a glob), with live progress."""

import glob as globbing
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import _files
from ._calls import FINAL_STATUSES, batch_done, workflow_done
from ._cli_common import EXIT_JOB_FAILED, EXIT_OK, BadInput, client, print_json
from ._cli_files import file_options, upload
from ._cli_jobs import _labels, job_options
from ._render_costs import estimate_line
from ._render_work import (
    batch_line,
    batch_members,
    failure_lines,
    load_spec,
    node_changes,
    not_succeeded,
    workflow_text,
)
from .client import Client
from .errors import TaskyardError

POLL_S = 0.5


def _json_line(data: Any) -> None:
    click.echo(json.dumps(data, separators=(",", ":"), ensure_ascii=False))


# Workflows


@click.group()
def workflow() -> None:
    """Run a DAG of jobs from a spec file and follow it."""


@workflow.command("run")
@click.argument("spec_file", metavar="SPEC.yaml|SPEC.json|-")
@click.option(
    "--watch", is_flag=True, help="Follow the nodes until the workflow ends; exit 1 unless it succeeded."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the workflow as JSON (with --watch: when it ends)."
)
def workflow_run(spec_file: str, watch: bool, as_json: bool) -> None:
    """Submit the workflow in SPEC (YAML or JSON; - reads stdin); prints its id.

    \b
      name: nightly
      nodes:
        scan:    {type: shell, payload: {command: [./scan.sh]}}
        report:  {type: shell, payload: {command: [./report.sh]}, needs: [scan]}
    """
    try:
        text = sys.stdin.read() if spec_file == "-" else Path(spec_file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise BadInput(f"{spec_file}: cannot read: {reason}") from None
    try:
        spec = load_spec(text, spec_file)
    except ValueError as exc:
        raise BadInput(f"{spec_file}: {exc}") from None
    ty = client()
    created = ty.submit_workflow(spec)
    if not watch:
        if as_json:
            print_json(created)
        else:
            click.echo(created["id"])
        return
    click.echo(f"workflow {created['id']} submitted", err=True)
    _watch_workflow(ty, created["id"], as_json)


def _watch_workflow(ty: Client, workflow_id: str, as_json: bool) -> None:
    """Print each node's status change (stderr with --json, so stdout stays one JSON document)."""
    seen: dict[str, str] = {}
    while True:
        current = ty.workflow(workflow_id)
        for line in node_changes(seen, current):
            click.echo(line, err=as_json)
        if workflow_done(current):
            break
        time.sleep(POLL_S)
    if as_json:
        print_json(current)
    else:
        click.echo(workflow_text(current))
    sys.exit(EXIT_OK if current.get("status") == "succeeded" else EXIT_JOB_FAILED)


@workflow.command("status")
@click.argument("workflow_id", metavar="ID")
@click.option("--watch", is_flag=True, help="Follow until it ends; exit 1 unless it succeeded.")
@click.option("--json", "as_json", is_flag=True, help="Print the workflow as JSON.")
def workflow_status(workflow_id: str, watch: bool, as_json: bool) -> None:
    """Show a workflow: its status and each node's, in dependency order."""
    ty = client()
    if watch:
        _watch_workflow(ty, workflow_id, as_json)
    current = ty.workflow(workflow_id)
    if as_json:
        print_json(current)
    else:
        click.echo(workflow_text(current))


@workflow.command("cancel")
@click.argument("workflow_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help='Print {"cancelled": n, "refused": [...]}.')
def workflow_cancel(workflow_id: str, as_json: bool) -> None:
    """Cancel every node of a workflow that has not finished."""
    _report_each(client().cancel_workflow(workflow_id), "cancelled", as_json)


@workflow.command("retry")
@click.argument("workflow_id", metavar="ID")
@click.option("--node", metavar="NODE", help="The node to run again (default: every failed node).")
@click.option("--json", "as_json", is_flag=True, help="Print the retried node jobs as JSON.")
def workflow_retry(workflow_id: str, node: str | None, as_json: bool) -> None:
    """Run a failed node again, with the nodes that depend on it; finished siblings stay."""
    ty = client()
    if node is None:
        current = ty.workflow(workflow_id)
        # A map node's items are retried through it (it joins their results again).
        names = [
            n["id"]
            for n in current.get("nodes") or []
            if n.get("status") in ("failed", "dead", "cancelled") and "of" not in (n.get("map") or {})
        ]
        if not names:
            raise BadInput(f"workflow {workflow_id} has no failed, dead or cancelled node to retry")
    else:
        names = [node]
    jobs = [ty.retry_workflow_node(workflow_id, name) for name in names]
    if as_json:
        print_json(jobs)
        return
    for name, job in zip(names, jobs, strict=True):
        click.echo(f"{name}: {job.get('status')} (job {job.get('id')}, attempt {job.get('attempt', 0)})")


def _report_each(answer: dict[str, Any], verb: str, as_json: bool) -> None:
    if as_json:
        print_json(answer)
        return
    click.echo(f"{verb} {answer.get(verb, 0)}")
    for refused in answer.get("refused") or []:
        click.echo(f"  not {verb}: {refused.get('id')}: {refused.get('reason')}", err=True)


# Batches


@click.group()
def batch() -> None:
    """Run one shell job per file as a batch, follow its progress, retry what failed."""


@batch.command("run", context_settings={"allow_interspersed_args": False})
@click.option("--glob", "pattern", required=True, metavar="PATTERN", help="Files to process ('**' recurses).")
@click.option("--name", metavar="NAME", help="A name for the batch.")
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    metavar="N",
    help="At most N jobs of the batch queued or running at once (the rest wait as `throttled`).",
)
@click.option(
    "--cwd",
    metavar="DIR",
    help="Directory the jobs run in, on the worker [default: this one; with files: the job's own "
    "working directory]; '' leaves it to the worker.",
)
@click.option(
    "--upload",
    "upload_each",
    is_flag=True,
    help="Upload each matched file and stage it in its job's working directory (implied by "
    "--input and --output).",
)
@file_options
@job_options
@click.option("--watch", is_flag=True, help="Follow the progress until every job has ended.")
@click.option("--json", "as_json", is_flag=True, help='Print {"batch_id", "jobs"} (with --watch: progress).')
@click.option(
    "--estimate",
    "estimate_only",
    is_flag=True,
    help="Only print what the batch would likely use and cost (from recent shell jobs); submit nothing.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def batch_run(
    pattern: str,
    name: str | None,
    parallel: int | None,
    cwd: str | None,
    upload_each: bool,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    queue: str | None,
    priority: str | None,
    timeout_s: float | None,
    max_attempts: int | None,
    labels: tuple[str, ...],
    watch: bool,
    as_json: bool,
    estimate_only: bool,
    command: tuple[str, ...],
) -> None:
    """Submit one shell job per path matching --glob, running COMMAND with `{}` replaced by the
    path (appended when COMMAND has no `{}`). Paths are as matched here and jobs run in this
    directory (--cwd): workers must see the same files (one machine, or a shared mount).

    With --upload, --input or --output, each matched file is uploaded instead (once per sha256)
    and staged in its job's working directory at the path `{}` names; --input files go to every
    job, --output globs are collected per job (`taskyard batch download ID`).

    \b
      taskyard batch run --glob 'data/*.csv' -- python proc.py {}
      taskyard batch run --glob 'data/*.csv' --parallel 8 -- python proc.py {}
      taskyard batch run --glob 'data/*.csv' --input proc.py --output 'out/**' -- python proc.py {}
    """
    paths = sorted(globbing.glob(pattern, recursive=True))
    if not paths:
        raise BadInput(f"--glob: no file matches {pattern!r} (relative to {Path.cwd()})")
    options = {
        "queue": queue,
        "priority": priority,
        "timeout_s": timeout_s,
        "max_attempts": max_attempts,
        "labels": _labels(labels),
    }
    ty = client()
    # Before anything is uploaded or submitted: what it will likely cost (docs/costs.md).
    _print_estimate(ty, len(paths), queue)
    if estimate_only:
        return
    if upload_each or inputs or outputs:
        members = _members_with_files(ty, paths, command, options, cwd, inputs, outputs)
    else:
        workdir = str(Path.cwd()) if cwd is None else cwd
        members = batch_members(paths, command, options, workdir or None)
    created = ty.create_batch(members, name=name, parallel=parallel)
    batch_id = created["batch_id"]
    if not watch:
        if as_json:
            print_json(created)
        else:
            click.echo(batch_id)
        return
    click.echo(f"batch {batch_id}: {len(paths)} jobs submitted", err=True)
    _watch_batch(ty, batch_id, as_json)


def _print_estimate(ty: Client, count: int, queue: str | None) -> None:
    """The estimate on stderr (stdout stays the batch id or JSON); an API that cannot give one
    (an older one, a viewer key refused) does not stop the batch."""
    try:
        estimate = ty.cost_estimate("shell", count, queue)
    except TaskyardError as exc:
        click.echo(f"estimate unavailable: {exc}", err=True)
        return
    click.echo(estimate_line(estimate), err=True)


def _members_with_files(
    ty: Client,
    paths: list[str],
    command: tuple[str, ...],
    options: dict[str, Any],
    cwd: str | None,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
) -> list[dict[str, Any]]:
    """One job per matched file, staged as its input (`{}` is where the job sees it); the shared
    --input refs are uploaded once and named by every job."""
    shared = upload(ty, inputs) or []
    names = [_files.staged_name(p) for p in paths]
    if len(set(names)) < len(names):
        raise BadInput("--glob: two matched files would be staged at the same name; use a relative pattern")
    refs = [ty.upload_input(path, name) for path, name in zip(paths, names, strict=True)]
    click.echo(
        f"batch files: {len(refs)} matched, {len({r['sha256'] for r in refs})} distinct, "
        f"{sum(r['size'] for r in refs)} bytes",
        err=True,
    )
    members = batch_members(names, command, options, cwd or None)
    for member, ref in zip(members, refs, strict=True):
        member["inputs"] = [ref, *(r for r in shared if r["path"] != ref["path"])]
        if outputs:
            member["outputs"] = list(outputs)
    return members


@batch.command("download")
@click.argument("batch_id", metavar="ID")
@click.option("--to", "to", default=".", show_default=True, metavar="DIR", help="Directory to write into.")
@click.option("--list", "list_only", is_flag=True, help="List each member's outputs instead.")
def batch_download(batch_id: str, to: str, list_only: bool) -> None:
    """Download every member's outputs, each member's under DIR/<job id>/; checks each sha256."""
    from ._render import table

    ty = client()
    members = ty.batch_artifacts(batch_id)["members"]
    rows = [(m["job_id"], o) for m in members for o in m["outputs"]]
    unfinished = [m["job_id"] for m in members if m["status"] not in FINAL_STATUSES]
    if unfinished:
        click.echo(f"{len(unfinished)} members have not ended: their outputs are not all collected", err=True)
    if list_only:
        click.echo(
            table(
                ["JOB", "NAME", "SIZE", "SHA256"], [[j, o["name"], o["size"], o["sha256"]] for j, o in rows]
            )
        )
        return
    for job_id, item in rows:
        try:
            path = ty.download(job_id, item["name"], Path(to) / job_id)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        click.echo(f"{path}  {item['size']} bytes  sha256 {item['sha256']}")
    click.echo(f"{len(rows)} files from {len({j for j, _ in rows})} of {len(members)} members", err=True)


@batch.command("status")
@click.argument("batch_id", metavar="ID")
@click.option(
    "--watch", is_flag=True, help="Follow until every job has ended; exit 1 if any did not succeed."
)
@click.option("--json", "as_json", is_flag=True, help="JSON (with --watch: one line per change).")
def batch_status(batch_id: str, watch: bool, as_json: bool) -> None:
    """Show a batch's progress, its counts by status and its failures grouped by error."""
    ty = client()
    if watch:
        _watch_batch(ty, batch_id, as_json)
    progress = ty.batch(batch_id)
    if as_json:
        print_json(progress)
        return
    click.echo(batch_line(progress))
    for line in failure_lines(progress):
        click.echo(line)


def _watch_batch(ty: Client, batch_id: str, as_json: bool) -> None:
    """A live progress bar on a terminal; otherwise a line (or a JSON line) whenever progress moves."""
    if not as_json and sys.stdout.isatty():
        progress = _progress_bar(ty, batch_id)
    else:
        last = None
        while True:
            progress = ty.batch(batch_id)
            shown = (progress.get("done"), progress.get("counts"))
            if shown != last:
                if as_json:
                    _json_line(progress)
                else:
                    click.echo(batch_line(progress))
                last = shown
            if batch_done(progress):
                break
            time.sleep(POLL_S)
    if not as_json:
        for line in failure_lines(progress):
            click.echo(line)
    sys.exit(EXIT_OK if not_succeeded(progress) == 0 else EXIT_JOB_FAILED)


def _progress_bar(ty: Client, batch_id: str) -> dict[str, Any]:
    # rich is imported here: every other command starts without paying for it.
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn

    from ._render_work import counts_text, eta_text

    progress = ty.batch(batch_id)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[counts]} · {task.fields[eta]}"),
    )
    with Progress(*columns, console=Console(), transient=False) as bar:
        title = f"batch {progress.get('name') or batch_id}"
        task = bar.add_task(title, total=progress.get("total"), counts=counts_text(progress), eta="")
        while True:
            eta = "done" if batch_done(progress) else eta_text(progress.get("eta_seconds"))
            bar.update(task, completed=progress.get("done", 0), counts=counts_text(progress), eta=eta)
            if batch_done(progress):
                return progress
            time.sleep(POLL_S)
            progress = ty.batch(batch_id)


@batch.command("retry")
@click.argument("batch_id", metavar="ID")
@click.option("--failed", is_flag=True, required=True, help="Run the failed, dead and cancelled jobs again.")
@click.option("--json", "as_json", is_flag=True, help='Print {"retried": n, "refused": [...]}.')
def batch_retry(batch_id: str, failed: bool, as_json: bool) -> None:
    """Run a batch's failed, dead and cancelled jobs again (those that succeeded stay)."""
    _report_each(client().retry_batch(batch_id), "retried", as_json)


@batch.command("cancel")
@click.argument("batch_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help='Print {"cancelled": n, "refused": [...]}.')
def batch_cancel(batch_id: str, as_json: bool) -> None:
    """Cancel a batch's jobs that have not finished."""
    _report_each(client().cancel_batch(batch_id), "cancelled", as_json)


COMMANDS = [workflow, batch]
