"""CLI plumbing shared by the command modules: the lazy client, exit codes, and error reporting."""

import json
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click

from .client import Client
from .errors import ConfigError, TaskyardError

# Exit codes (documented in `taskyard --help`).
EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4


class BadInput(Exception):
    """Bad command-line input found after parsing (invalid JSON, malformed label): exit 2, one line."""


@dataclass
class State:
    """What the group passes to its commands; the client is built on first use so `--help` and
    input errors never need a reachable API or a readable credentials file."""

    url: str | None = None
    api_key: str | None = None
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, self.api_key)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def keyless(self) -> bool:
        """True when a client was built without any API key (worth a hint on a 401)."""
        return self._client is not None and not self._client.api_key


def client() -> Client:
    """The current command's Client."""
    state = click.get_current_context().find_object(State)
    assert state is not None, "the `taskyard` group sets up State before any command runs"
    return state.client


def fail(message: str, code: int) -> NoReturn:
    """Print `error: message` on stderr and exit with `code`."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def report(exc: Exception, state: State | None = None) -> NoReturn:
    """Turn an SDK or input error into one stderr line and the documented exit code."""
    if isinstance(exc, BadInput | ConfigError):
        fail(str(exc), EXIT_USAGE)
    if isinstance(exc, TaskyardError):
        if exc.status_code == 0:
            fail(exc.detail, EXIT_UNREACHABLE)
        message = f"{exc.status_code} {exc.detail}"
        if exc.status_code == 401 and state is not None and state.keyless():
            message += " (no API key configured: --api-key, TASKYARD_API_KEY or TASKYARD_CREDENTIALS)"
        fail(message, EXIT_UNREACHABLE if exc.status_code >= 500 else EXIT_REFUSED)
    raise exc


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


class LinePrinter:
    """Prints log line dicts: stderr lines (and, if asked, the executor's own "log" lines) to stderr,
    the rest to stdout, with a note on stderr when a new attempt starts."""

    def __init__(self, log_to_stderr: bool = False) -> None:
        self.log_to_stderr = log_to_stderr
        self.attempt: int | None = None

    def __call__(self, line: dict[str, Any]) -> None:
        attempt = line.get("attempt")
        if isinstance(attempt, int):
            if self.attempt is not None and attempt != self.attempt:
                click.echo(f"taskyard: attempt {attempt}", err=True)
            self.attempt = attempt
        stream = line.get("stream")
        to_stderr = stream == "stderr" or (self.log_to_stderr and stream == "log")
        click.echo(str(line.get("line", "")).rstrip("\n"), err=to_stderr)
