"""Artifact names: one normal form, and a refusal (naming the rule) for names that could escape.

A name is a relative POSIX path (`out/report.csv`). It becomes a file under a job's working
directory (inputs), an object name in the store, and a file under `taskyard download --to DIR`,
so every one of those places relies on this check: no absolute path, no `..`, no control
characters, no empty segment after normalising.
"""

import re
import unicodedata

MAX_NAME_CHARS = 1024
MAX_SEGMENT_BYTES = 255  # a file name on Linux filesystems
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


class BadName(ValueError):
    """The name is refused; the message says which rule it breaks."""


def normalise(name: str) -> str:
    """The normal form of an artifact name, or BadName.

    NFC Unicode, `/` separators, `.` and empty segments dropped. Refused: absolute paths (also
    `C:` drives and backslashes, which mean a separator on the laptop the name may come from),
    any `..` segment, control characters, and over-long names or segments.
    """
    if not isinstance(name, str) or not name:
        raise BadName("must be a non-empty relative path")
    if len(name) > MAX_NAME_CHARS:
        raise BadName(f"longer than {MAX_NAME_CHARS} characters")
    if _CONTROL.search(name):
        raise BadName("control characters are not allowed")
    if "\\" in name:
        raise BadName(f"{name!r}: backslashes are not allowed (use / between directories)")
    if name.startswith("/") or _DRIVE.match(name):
        raise BadName(
            f"{name!r}: absolute paths are not allowed (name a path relative to the working directory)"
        )
    parts = [p for p in unicodedata.normalize("NFC", name).split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadName(f"{name!r}: '..' is not allowed (names stay inside the working directory)")
    if not parts:
        raise BadName(f"{name!r}: names no file")
    if any(len(p.encode()) > MAX_SEGMENT_BYTES for p in parts):
        raise BadName(f"{name!r}: a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    return "/".join(parts)


def check_sha256(value: str) -> str:
    """`value` if it is 64 lower-case hex digits (a sha256 digest), else BadName."""
    if not isinstance(value, str) or not SHA256_HEX.match(value):
        raise BadName("must be a sha256 digest: 64 lower-case hex digits")
    return value
