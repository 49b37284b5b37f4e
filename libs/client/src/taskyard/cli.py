"""The `taskyard` command line, built on taskyard.Client.

Commands live in _cli_jobs (jobs and logs), _cli_keys (identity, keys), _cli_ops (workers,
queues, doctor), _cli_checkpoints (the approvals inbox), _cli_chat (a job's thread), _cli_work (workflows, batches),
_cli_schedules (schedules) and _cli_costs (costs); a new command module only has to
export COMMANDS and be added to _MODULES below.
"""

from typing import Any

import click

from . import (
    _cli_chat,
    _cli_checkpoints,
    _cli_costs,
    _cli_files,
    _cli_jobs,
    _cli_keys,
    _cli_ops,
    _cli_schedules,
    _cli_work,
)
from ._cli_common import BadInput, State, report
from .errors import TaskyardError

_MODULES = [
    _cli_jobs,
    _cli_keys,
    _cli_ops,
    _cli_checkpoints,
    _cli_chat,
    _cli_work,
    _cli_files,
    _cli_schedules,
    _cli_costs,
]

EPILOG = """\b
Exit codes: 0 ok · 1 the job failed (wait, run, submit --wait; run passes on the job's own code),
            a watched workflow or batch did not fully succeed, or doctor found a problem
            2 usage or bad input · 3 the API refused (4xx) · 4 API unreachable or 5xx
\b
Configuration: --url/--api-key, else TASKYARD_URL/TASKYARD_API_KEY, else the JSON file at
TASKYARD_CREDENTIALS, else ./data/credentials.json (written by ./taskw up)."""


class _Group(click.Group):
    """Reports SDK and input errors as one stderr line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (TaskyardError, BadInput) as exc:
            report(exc, ctx.find_object(State))


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="TASKYARD_URL", metavar="URL", help="API base URL [env TASKYARD_URL].")
@click.option("--api-key", envvar="TASKYARD_API_KEY", metavar="KEY", help="API key [env TASKYARD_API_KEY].")
@click.version_option(package_name="taskyard")
@click.pass_context
def cli(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    """Submit, inspect and follow Taskyard jobs; watch queues and workers; approve checkpoints."""
    state = ctx.ensure_object(State)
    state.url, state.api_key = url, api_key
    ctx.call_on_close(state.close)


for _module in _MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`taskyard`); `argv` defaults to sys.argv[1:]."""
    cli.main(args=argv, prog_name="taskyard")
