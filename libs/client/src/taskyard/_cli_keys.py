"""Identity and API key commands: whoami, keys create/list/revoke."""

import click

from ._cli_common import client, print_json
from ._render import short_time, table


@click.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"id", "name", "role", "url"}.')
def whoami(as_json: bool) -> None:
    """Show the name and role of the API key in use, and the API URL."""
    ty = client()
    me = ty.whoami()
    if as_json:
        print_json({**me, "url": ty.url})
        return
    click.echo(f"{me.get('name')} · {me.get('role')} · {ty.url}")


@click.group()
def keys() -> None:
    """Manage API keys (admin)."""


@keys.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["viewer", "submitter", "admin"]))
def keys_create(name: str, role: str) -> None:
    """Create a key; prints only the key (it is shown this once)."""
    created = client().keys_create(name, role)
    click.echo(created["key"])
    click.echo(
        f"created key {created.get('id')} ({name}, {role}); store it now, it is not shown again", err=True
    )


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help='Print {"keys": [...]}.')
def keys_list(as_json: bool) -> None:
    """List keys, revoked ones included."""
    if as_json:
        print_json({"keys": client().keys_list()})
        return
    rows = [
        [str(k.get("id")), str(k.get("name")), str(k.get("role")), short_time(k.get("created_at")),
         short_time(k.get("revoked_at")) if k.get("revoked_at") else "-"]
        for k in client().keys_list()
    ]  # fmt: skip
    click.echo(table(["ID", "NAME", "ROLE", "CREATED (UTC)", "REVOKED (UTC)"], rows))


@keys.command("revoke")
@click.argument("key_id", metavar="ID")
def keys_revoke(key_id: str) -> None:
    """Revoke a key; requests with it fail with 401 from then on."""
    client().keys_revoke(key_id)
    click.echo(f"revoked {key_id}")


COMMANDS = [whoami, keys]
