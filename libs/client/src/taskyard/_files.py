"""Local side of job files: which files an `--input` names, their sha256, safe download paths."""

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def expand_inputs(paths: list[str]) -> list[tuple[str, Path]]:
    """(name in the job's working directory, local file) for each `--input`.

    A file keeps its base name (`data/x.csv` → `x.csv`); a directory keeps its own name with
    every regular file under it (`images/` → `images/a.png`, `images/sub/b.png`). Symlinks to
    files are read as files; the walk follows no symlinked directory.
    """
    out: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            base = path.resolve().name
            for top, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = Path(top, name)
                    if full.is_file():
                        out[PurePosixPath(base, full.relative_to(path).as_posix()).as_posix()] = full
        elif path.is_file():
            out[path.name] = path
        else:
            raise FileNotFoundError(f"--input {raw}: no such file or directory")
    return list(out.items())


def staged_name(matched: str) -> str:
    """Where a file matched by `batch run --glob` sits in its job's working directory (what `{}`
    becomes): the path as matched when it is relative and stays inside (`data/a.csv`), otherwise
    its base name (`/abs/a.csv`, `../a.csv` → `a.csv`)."""
    path = PurePosixPath(Path(matched).as_posix())
    if path.is_absolute() or any(p in ("..", ".") for p in path.parts) or "\\" in matched:
        return path.name
    return path.as_posix()


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            yield chunk


def safe_target(root: Path, name: str) -> Path:
    """Where output `name` goes under `root`; ValueError for a name that would leave it (the
    server normalises names, but a client trusts no answer to choose its paths)."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or "\\" in name or any(p in ("..", "") for p in parts):
        raise ValueError(f"refusing to write output {name!r}: not a safe relative path")
    return root.joinpath(*parts)
