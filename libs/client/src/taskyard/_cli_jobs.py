"""Job commands: submit, run, get, status, list, cancel, retry, logs, wait."""

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ._cli_common import EXIT_JOB_FAILED, EXIT_OK, BadInput, LinePrinter, client, print_json
from ._cli_files import file_options, upload
from ._render import (
    JOB_HEADERS,
    exit_code,
    job_row,
    parse_labels,
    parse_statuses,
    short_time,
    status_line,
    table,
)
from ._render_ops import waiting_lines

LOG_PAGE = 1000
# What `status --json` prints: the summary, not the timeline (`get` prints everything).
STATUS_FIELDS = (
    "id", "status", "queue", "priority", "attempt", "max_attempts", "worker_id",
    "queue_position", "eta_seconds", "eta_range", "waiting_reason", "error",
)  # fmt: skip


def job_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The placement and retry options shared by `submit` and `run`."""
    options = [
        click.option("--queue", metavar="NAME", help="Queue (server default: default)."),
        click.option("--priority", type=click.Choice(["high", "normal", "low"]), help="Default: normal."),
        click.option("--timeout", "timeout_s", type=float, metavar="SECONDS", help="Per-attempt time limit."),
        click.option("--max-attempts", type=int, metavar="N", help="Attempts before the job is dead."),
        click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label (repeatable)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def gate_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The gates a job may wait behind before it is queued (docs/gates.md)."""
    options = [
        click.option("--run-at", metavar="TIME", help="Not before this RFC 3339 time (with an offset)."),
        click.option("--delay", "delay_s", type=float, metavar="SECONDS", help="Not before now + SECONDS."),
        click.option(
            "--concurrency", metavar="KEY=LIMIT", help="At most LIMIT jobs of KEY at once (tenant:acme=2)."
        ),
        click.option(
            "--strategy",
            type=click.Choice(["queue", "round_robin", "cancel_newest", "cancel_in_progress", "keep_latest"]),
            help="What --concurrency does when the key is full (default: queue).",
        ),
        click.option("--rate", metavar="KEY=N/s|N/min", help="Admit jobs of KEY no faster (openai=5/s)."),
        click.option("--burst", type=int, metavar="N", help="Jobs --rate may admit at once (default 1)."),
        click.option(
            "--approval-by",
            "approvers",
            multiple=True,
            metavar="ROLE|KEY",
            help="Needs a yes from this role or key name before it starts (repeatable).",
        ),  # fmt: skip
    ]
    for option in reversed(options):
        func = option(func)
    return func


def gates_of(
    run_at: str | None,
    delay_s: float | None,
    concurrency: str | None,
    strategy: str | None,
    rate: str | None,
    burst: int | None,
    approvers: tuple[str, ...],
) -> dict[str, Any]:
    """The submit's gate fields from gate_options' values; BadInput naming the option."""
    gates: dict[str, Any] = {"run_at": run_at, "delay_s": delay_s}
    if concurrency is not None:
        key, limit = _key_value("--concurrency", concurrency)
        if not limit.isdigit():
            raise BadInput(f"--concurrency: LIMIT must be a whole number, got {limit!r}")
        gates["concurrency"] = {
            "key": key,
            "limit": int(limit),
            **({"strategy": strategy} if strategy else {}),
        }
    elif strategy is not None:
        raise BadInput("--strategy: give --concurrency KEY=LIMIT too")
    if rate is not None:
        key, amount = _key_value("--rate", rate)
        number, _, unit = amount.partition("/")
        if unit not in ("s", "min"):
            raise BadInput(f"--rate: expected KEY=N/s or KEY=N/min, got {rate!r}")
        try:
            per = float(number)
        except ValueError:
            raise BadInput(f"--rate: {number!r} is not a number") from None
        gates["rate"] = {"key": key, f"per_{unit}": per, **({"burst": burst} if burst else {})}
    elif burst is not None:
        raise BadInput("--burst: give --rate KEY=N/s too")
    if approvers:
        gates["approval"] = {"approvers": list(approvers)}
    return gates


def _key_value(option: str, text: str) -> tuple[str, str]:
    key, sep, value = text.rpartition("=")
    if not sep or not key:
        raise BadInput(f"{option}: expected KEY=VALUE, got {text!r}")
    return key, value


def _labels(items: tuple[str, ...]) -> dict[str, str] | None:
    try:
        return parse_labels(items) or None
    except ValueError as exc:
        raise BadInput(f"--label: {exc}") from None


def _payload(text: str | None, path: str | None) -> Any:
    if text is not None and path is not None:
        raise BadInput("give --payload or --payload-file, not both")
    option = "--payload"
    if path is not None:
        option = "--payload-file"
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise BadInput(f"--payload-file: cannot read {path}: {reason}") from None
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadInput(f"{option}: invalid JSON: {exc}") from None


@click.command()
@click.argument("type")
@click.option("--payload", metavar="JSON", help="Payload as a JSON document.")
@click.option("--payload-file", metavar="PATH|-", help="Read the JSON payload from a file (- for stdin).")
@job_options
@gate_options
@file_options
@click.option("--idempotency-key", metavar="KEY", help="Submitting the same key again returns the same job.")
@click.option(
    "--wait", "wait_", is_flag=True, help="Wait until the job is final; exit 1 unless it succeeded."
)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON instead of its id.")
def submit(
    type: str,
    payload: str | None,
    payload_file: str | None,
    queue: str | None,
    priority: str | None,
    timeout_s: float | None,
    max_attempts: int | None,
    labels: tuple[str, ...],
    run_at: str | None,
    delay_s: float | None,
    concurrency: str | None,
    strategy: str | None,
    rate: str | None,
    burst: int | None,
    approvers: tuple[str, ...],
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    idempotency_key: str | None,
    wait_: bool,
    as_json: bool,
) -> None:
    """Submit a job of TYPE; prints its id.

    TYPE is noop, sleep, shell, python, http or a registered handler name.
    """
    body, label_map = _payload(payload, payload_file), _labels(labels)
    gates = gates_of(run_at, delay_s, concurrency, strategy, rate, burst, approvers)
    ty = client()
    job = ty.submit(
        type, body, queue=queue, priority=priority, timeout_s=timeout_s, max_attempts=max_attempts,
        idempotency_key=idempotency_key, labels=label_map, inputs=upload(ty, inputs), outputs=list(outputs),
        **gates,
    )  # fmt: skip
    if as_json and not wait_:
        print_json(job)
    if not as_json:
        click.echo(job["id"])
    if not wait_:
        return
    job = ty.wait(job["id"])
    if as_json:
        print_json(job)
    else:
        click.echo(status_line(job), err=True)  # stdout stays just the id, for $(taskyard submit ...)
    sys.exit(EXIT_OK if job.get("status") == "succeeded" else EXIT_JOB_FAILED)


@click.command(context_settings={"allow_interspersed_args": False})
@job_options
@file_options
@click.option("--shell", is_flag=True, help="Run COMMAND through the shell (its words joined by spaces).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    queue: str | None,
    priority: str | None,
    timeout_s: float | None,
    max_attempts: int | None,
    labels: tuple[str, ...],
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    shell: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as a shell job, mirroring its output and exit code.

    \b
      taskyard run -- make test
      taskyard run --shell -- 'du -sh /var/* | sort -h'
      taskyard run --input data.csv --output 'out/**' -- python proc.py data.csv
    """
    payload: dict[str, Any] = (
        {"command": " ".join(command), "shell": True} if shell else {"command": [*command]}
    )
    label_map = _labels(labels)
    ty = client()
    job = ty.submit(
        "shell", payload, queue=queue, priority=priority, timeout_s=timeout_s, max_attempts=max_attempts,
        labels=label_map, inputs=upload(ty, inputs), outputs=list(outputs),
    )  # fmt: skip
    job_id = job["id"]
    # Status notes go to stderr so stdout carries only the command's own output.
    click.echo(f"job {job_id} queued", err=True)
    printer = LinePrinter(log_to_stderr=True)
    try:
        for line in ty.follow_logs(job_id):
            printer(line)
        final = ty.wait(job_id)  # the end event can precede the final state being readable
    except KeyboardInterrupt:
        click.echo(f"\ntaskyard: detached; job {job_id} keeps running (taskyard cancel {job_id})", err=True)
        sys.exit(130)
    if final.get("status") != "succeeded":
        click.echo(f"taskyard: {status_line(final)}", err=True)
    if outputs:
        click.echo(f"taskyard: outputs: taskyard download {job_id} [--to DIR]", err=True)
    sys.exit(exit_code(final))


@click.command()
@click.argument("job_id", metavar="ID")
def get(job_id: str) -> None:
    """Print a job (with its timeline) as JSON."""
    print_json(client().get(job_id))


@click.command()
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the job's status fields as JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Print a one-line summary of a job (a waiting one: position, ETA, why)."""
    job = client().get(job_id)
    if as_json:
        print_json({k: job.get(k) for k in STATUS_FIELDS})
        return
    click.echo("\n".join(waiting_lines(job) or [status_line(job)]))


@click.command("list")
@click.option("--status", "statuses", multiple=True, metavar="STATUS", help="Filter (repeatable, or a,b).")
@click.option("--queue", metavar="NAME")
@click.option("--type", "type_", metavar="TYPE")
@click.option("--label", metavar="KEY=VALUE")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Jobs per page.")
@click.option("--all", "all_", is_flag=True, help="Follow the cursor through every page.")
@click.option("--json", "as_json", is_flag=True, help='Print {"jobs": [...], "next_cursor": ...}.')
def list_(
    statuses: tuple[str, ...],
    queue: str | None,
    type_: str | None,
    label: str | None,
    limit: int,
    all_: bool,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    try:
        wanted = parse_statuses(statuses) or None
    except ValueError as exc:
        raise BadInput(f"--status: {exc}") from None
    if label is not None:
        _labels((label,))  # validate only; the API takes the key=value text as is
    ty = client()
    if all_:
        jobs, cursor = list(ty.iter_jobs(wanted, queue, type_, label, limit=limit)), None
    else:
        page = ty.list(wanted, queue, type_, label, limit=limit)
        jobs, cursor = page["jobs"], page.get("next_cursor")
    if as_json:
        print_json({"jobs": jobs, "next_cursor": cursor})
        return
    if not jobs:
        click.echo("no jobs", err=True)
        return
    click.echo(table(JOB_HEADERS, [job_row(job) for job in jobs]))
    if cursor:
        click.echo(f"(first {len(jobs)}; more with --all or a larger --limit)", err=True)


@click.command()
@click.argument("job_id", metavar="ID")
def cancel(job_id: str) -> None:
    """Cancel a queued or running job."""
    click.echo(status_line(client().cancel(job_id)))


@click.command()
@click.option("--delay", "delay_s", type=float, metavar="SECONDS", help="Run again no earlier than this.")
@click.argument("job_id", metavar="ID")
def retry(delay_s: float | None, job_id: str) -> None:
    """Queue a failed, dead or cancelled job again."""
    click.echo(status_line(client().retry(job_id, delay_s)))


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job is final.")
@click.argument("job_id", metavar="ID")
def logs(follow: bool, job_id: str) -> None:
    """Print a job's log lines (stderr lines go to stderr)."""
    ty, printer = client(), LinePrinter()
    if follow:
        for line in ty.follow_logs(job_id):
            printer(line)
        return
    after = 0
    while True:
        lines = ty.logs(job_id, after=after, limit=LOG_PAGE).get("lines") or []
        for line in lines:
            printer(line)
        seq = lines[-1].get("seq") if lines else None
        # Page until an empty page (the server may cap `limit` below ours); stop if seq would not move.
        if not isinstance(seq, int) or seq <= after:
            return
        after = seq


@click.command()
@click.argument("job_id", metavar="ID")
@click.option("--timeout", type=float, metavar="SECONDS", help="Give up (exit 1) after this long.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the final line, even on a terminal.")
def wait(job_id: str, timeout: float | None, quiet: bool) -> None:
    """Wait until a job is final; exit 0 if it succeeded, 1 otherwise.

    On a terminal each change of state (queued → running → …, a new attempt, a new reason) is
    printed to stderr as it happens; the final line goes to stdout."""
    ty = client()
    shown: list[str] = []

    def changed(job: dict[str, Any]) -> None:
        reason = (job.get("waiting_reason") or {}).get("code")
        key = f"{job.get('status')}/{job.get('attempt')}/{reason}"
        if not shown or shown[-1] != key:
            shown.append(key)
            click.echo("\n".join(waiting_lines(job) or [status_line(job)]), err=True)

    follow = None if quiet or not sys.stderr.isatty() else changed
    try:
        job = ty.wait(job_id, timeout=timeout, on_change=follow)
    except TimeoutError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_JOB_FAILED)
    click.echo(status_line(job))
    sys.exit(EXIT_OK if job.get("status") == "succeeded" else EXIT_JOB_FAILED)


@click.command()
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the webhook and its deliveries as JSON.")
def notifications(job_id: str, as_json: bool) -> None:
    """A job's webhook (`notify`) and each delivery: status, tries and the receiver's answers."""
    found = client().notifications(job_id)
    if as_json:
        print_json(found)
        return
    hook = found.get("notify")
    if not hook:
        click.echo(f"job {job_id} has no webhook", err=True)
        return
    click.echo(f"webhook {hook['url']} on {', '.join(hook['on'])}")
    for n in found.get("notifications") or []:
        click.echo(
            f"  {n['outcome']}: {n['status']} after {n['attempts']} tr{'y' if n['attempts'] == 1 else 'ies'}"
        )
        for d in n.get("deliveries") or []:
            answer = d.get("status_code") or d.get("error")
            click.echo(f"    {short_time(d.get('at'))}  {answer}  {d.get('ms')} ms")


COMMANDS = [submit, run, get, status, list_, cancel, retry, logs, wait, notifications]
