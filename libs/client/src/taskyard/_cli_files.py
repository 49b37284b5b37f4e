"""Job files on the command line: `--input`/`--output` for submit and run, and `download`."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ._cli_common import BadInput, client
from ._render import table
from .client import Client


def file_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--input` and `--output`, shared by `submit` and `run`."""
    func = click.option(
        "--output",
        "outputs",
        multiple=True,
        metavar="GLOB",
        help="Collect files matching GLOB (relative to the job's working directory, e.g. 'out/**') "
        "after the run, whatever the outcome (repeatable).",
    )(func)
    return click.option(
        "--input",
        "inputs",
        multiple=True,
        metavar="PATH",
        help="Upload a file or directory into the job's working directory (repeatable; "
        "a file already stored, by sha256, is not uploaded again).",
    )(func)


def upload(ty: Client, inputs: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """Input refs for submit(), uploading what the server does not have yet."""
    if not inputs:
        return None
    try:
        refs = ty.upload_inputs(list(inputs))
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from None
    total = sum(r["size"] for r in refs)
    click.echo(f"inputs: {len(refs)} files, {total} bytes", err=True)
    return refs


@click.command()
@click.argument("job_id", metavar="ID")
@click.option("--to", "to", default=".", show_default=True, metavar="DIR", help="Directory to write into.")
@click.option("--list", "list_only", is_flag=True, help="List the outputs instead of downloading them.")
def download(job_id: str, to: str, list_only: bool) -> None:
    """Download a job's outputs into DIR (names keep their directories); checks each sha256."""
    ty = client()
    outputs = ty.artifacts(job_id)["outputs"]
    if list_only or not outputs:
        if outputs:
            click.echo(
                table(["NAME", "SIZE", "SHA256"], [[o["name"], o["size"], o["sha256"]] for o in outputs])
            )
        else:
            click.echo(f"job {job_id} has no outputs", err=True)
        return
    for item in outputs:
        try:
            path = ty.download(job_id, item["name"], Path(to))
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        click.echo(f"{path}  {item['size']} bytes  sha256 {item['sha256']}")


COMMANDS = [download]
