"""Schedule commands: taskyard schedules create|list|show|pause|resume|trigger|delete."""

from typing import Any

import click

from ._cli_common import BadInput, client, print_json
from ._cli_jobs import _labels, _payload
from ._render import table
from ._render_schedules import (
    FIRE_HEADERS,
    SCHEDULE_HEADERS,
    fire_row,
    schedule_row,
    show_lines,
    trigger_line,
)

OVERLAPS = ["allow", "skip", "cancel_previous", "queue_one"]
CATCH_UPS = ["none", "latest", "all"]


@click.group()
def schedules() -> None:
    """Create jobs on a cron schedule or an interval, in a time zone."""


@schedules.command("create")
@click.option("--cron", metavar="EXPR", help="5 fields (m h dom mon dow), 6 with seconds first, or @daily.")
@click.option("--every", "every_s", type=float, metavar="SECONDS", help="An interval instead of --cron.")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="IANA time zone of --cron.")
@click.option("--type", "job_type", required=True, help="The job type each fire submits.")
@click.option("--payload", metavar="JSON", help="The jobs' payload as a JSON document.")
@click.option("--payload-file", metavar="PATH|-", help="Read the JSON payload from a file (- for stdin).")
@click.option("--queue", help="Queue of the jobs.")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]))
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label of the jobs (repeatable).")
@click.option("--name", help="A name for the schedule.")
@click.option(
    "--overlap",
    type=click.Choice(OVERLAPS),
    default="allow",
    show_default=True,
    help="While the previous fire's job is not final: fire anyway, skip, cancel it, or queue one.",
)
@click.option(
    "--catch-up",
    type=click.Choice(CATCH_UPS),
    default="latest",
    show_default=True,
    help="Fire times missed while no api ran: drop them, fire the latest, or all.",
)
@click.option("--catch-up-max", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--paused", is_flag=True, help="Create it paused.")
@click.option("--json", "as_json", is_flag=True, help="Print the created schedule as JSON.")
def create(
    cron: str | None,
    every_s: float | None,
    timezone: str,
    job_type: str,
    payload: str | None,
    payload_file: str | None,
    queue: str | None,
    priority: str | None,
    labels: tuple[str, ...],
    name: str | None,
    overlap: str,
    catch_up: str,
    catch_up_max: int,
    paused: bool,
    as_json: bool,
) -> None:  # fmt: skip
    """Create a schedule; prints its id and next 5 fire times."""
    if (cron is None) == (every_s is None):
        raise BadInput("give --cron or --every (one of them)")
    template: dict[str, Any] = {"type": job_type}
    for key, value in (("payload", _payload(payload, payload_file)), ("queue", queue),
                       ("priority", priority), ("labels", _labels(labels))):  # fmt: skip
        if value is not None:
            template[key] = value
    body: dict[str, Any] = {
        "template": template, "timezone": timezone, "overlap": overlap, "catch_up": catch_up,
        "catch_up_max": catch_up_max, "paused": paused,
    }  # fmt: skip
    body.update({k: v for k, v in (("cron", cron), ("every_s", every_s), ("name", name)) if v is not None})
    created = client().create_schedule(body)
    if as_json:
        print_json(created)
        return
    click.echo("\n".join(show_lines(created)))


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help='Print {"schedules": [...]}.')
def list_(as_json: bool) -> None:
    """List schedules with their next fire time."""
    found = client().schedules()
    if as_json:
        print_json({"schedules": found})
        return
    if not found:
        click.echo("no schedules", err=True)
        return
    click.echo(table(SCHEDULE_HEADERS, [schedule_row(s) for s in found]))


@schedules.command("show")
@click.argument("schedule_id", metavar="ID")
@click.option("--history", type=click.IntRange(0, 500), default=10, show_default=True, help="Recent fires.")
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
def show(schedule_id: str, history: int, as_json: bool) -> None:
    """A schedule: its timing, its next 5 fire times and its recent jobs."""
    s = client().schedule(schedule_id, history)
    if as_json:
        print_json(s)
        return
    click.echo("\n".join(show_lines(s)))
    fires = s.get("recent_jobs") or []
    click.echo("recent fires:" if fires else "recent fires: none yet")
    if fires:
        click.echo(table(FIRE_HEADERS, [fire_row(f) for f in fires]))


@schedules.command("pause")
@click.argument("schedule_id", metavar="ID")
def pause(schedule_id: str) -> None:
    """Stop firing until resumed."""
    client().pause_schedule(schedule_id)
    click.echo(f"paused {schedule_id}")


@schedules.command("resume")
@click.argument("schedule_id", metavar="ID")
def resume(schedule_id: str) -> None:
    """Fire again from the next fire time on (what passed while paused is not caught up)."""
    s = client().resume_schedule(schedule_id)
    fires = s.get("next_fires") or []
    click.echo(f"resumed {schedule_id}; next fire {fires[0] if fires else '-'}")


@schedules.command("trigger")
@click.argument("schedule_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the fire as JSON.")
def trigger(schedule_id: str, as_json: bool) -> None:
    """Fire now (the overlap policy applies); prints the job it created, or why none."""
    fired = client().trigger_schedule(schedule_id)
    if as_json:
        print_json(fired)
        return
    click.echo(trigger_line(fired))


@schedules.command("delete")
@click.argument("schedule_id", metavar="ID")
def delete(schedule_id: str) -> None:
    """Delete a schedule and its fire history; the jobs it created stay."""
    client().delete_schedule(schedule_id)
    click.echo(f"deleted {schedule_id}")


COMMANDS = [schedules]
