"""`taskyard cost`: what jobs used and spent, by label, queue, type, batch or workflow."""

import click

from ._cli_common import client, print_json
from ._render import table
from ._render_costs import COST_HEADERS, cost_row


@click.command("cost")
@click.option(
    "--since", default="7d", show_default=True, metavar="DURATION", help="How far back: 30m, 24h, 7d, 2w."
)
@click.option(
    "--by",
    default="queue",
    show_default=True,
    metavar="GROUPING",
    help="label:NAME (e.g. label:team), queue, type, batch or workflow.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer (GET /api/v1/costs).")
def cost(since: str, by: str, as_json: bool) -> None:
    """Totals over the attempts that ended within --since, per group: jobs, attempts (retries
    count), CPU and run time, the largest peak RSS, and what handlers reported spending
    (ctx.cost). Largest `usd` spend first. docs/costs.md says how each figure is measured.

    \b
      taskyard cost --since 7d --by label:team
      taskyard cost --since 24h --by type
    """
    answer = client().costs(since=since, by=by)
    if as_json:
        print_json(answer)
        return
    groups = answer["groups"]
    if not groups:
        click.echo(f"no attempts ended since {answer['since']}", err=True)
        return
    header = (f"{by.upper()}", *COST_HEADERS[1:])
    rows = [cost_row(g) for g in groups] + [cost_row({**answer["total"], "key": "TOTAL"})]
    click.echo(table(header, rows))


COMMANDS = [cost]
