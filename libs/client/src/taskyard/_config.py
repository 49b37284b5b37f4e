"""Where the client finds the API URL and key."""

import json
import os
from pathlib import Path

from .errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8740"
# Written by the embedded stack (`./taskw up`) in the directory it was started from.
LOCAL_CREDENTIALS = Path("data") / "credentials.json"


def _read_credentials(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"credentials file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f'credentials file {path} must hold an object {{"url": ..., "api_key": ...}}')
    return {k: v for k, v in data.items() if k in ("url", "api_key") and isinstance(v, str) and v}


def _credentials_file() -> dict[str, str]:
    """The credentials file's fields: $TASKYARD_CREDENTIALS (must exist), else ./data/credentials.json."""
    explicit = os.environ.get("TASKYARD_CREDENTIALS")
    if explicit:
        return _read_credentials(Path(explicit).expanduser())
    if LOCAL_CREDENTIALS.is_file():
        return _read_credentials(LOCAL_CREDENTIALS)
    return {}


def resolve(url: str | None = None, api_key: str | None = None) -> tuple[str, str | None]:
    """(url, api_key) from explicit args, else TASKYARD_URL / TASKYARD_API_KEY, else the credentials file.

    Each value is resolved on its own, so `TASKYARD_URL` plus a key from the file works. The URL
    falls back to http://127.0.0.1:8740; the key may stay None (only /healthz and /readyz work then).
    """
    url = url or os.environ.get("TASKYARD_URL") or None
    api_key = api_key or os.environ.get("TASKYARD_API_KEY") or None
    if url is None or api_key is None:
        # Only touch the file when needed, so a broken file can't break fully explicit configuration.
        found = _credentials_file()
        url = url or found.get("url")
        api_key = api_key or found.get("api_key")
    return (url or DEFAULT_URL).rstrip("/"), api_key
