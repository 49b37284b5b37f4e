"""Artifact names and output collection: what may be read and stored, and what is refused."""

import os
from pathlib import Path

import pytest

from taskyard_common.artifact_names import BadName, normalise
from taskyard_executor.staging import find_outputs, glob_regex


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("../etc/passwd", "'..' is not allowed"),
        ("out/../../x", "'..' is not allowed"),
        ("/etc/passwd", "absolute"),
        ("C:/x", "absolute"),
        ("a\\b", "backslashes"),
        ("a\x00b", "control"),
        ("./", "names no file"),
        ("", "non-empty"),
    ],
)
def test_unsafe_names_are_refused_naming_the_rule(name, rule):
    with pytest.raises(BadName, match=rule):
        normalise(name)


def test_names_are_normalised():
    assert normalise("./out//a/./b.txt") == "out/a/b.txt"
    assert normalise("cafe\u0301.txt") == "caf\u00e9.txt"  # NFC


def test_globs_stay_within_segments_and_double_star_spans():
    assert glob_regex("out/**").match("out/a/b.txt") and not glob_regex("out/**").match("out")
    assert glob_regex("*.csv").match("a.csv") and not glob_regex("*.csv").match("d/a.csv")
    assert glob_regex("**/*.csv").match("a.csv") and glob_regex("**/*.csv").match("d/e/a.csv")


def test_collection_refuses_escaping_symlinks_and_special_files(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    (work / "out" / "sub").mkdir(parents=True)
    (outside / "deep").mkdir(parents=True)
    (outside / "secret").write_text("no")
    (outside / "deep" / "x").write_text("no")
    (work / "out" / "ok.txt").write_text("ok")
    (work / "out" / "sub" / "n.txt").write_text("n")
    os.symlink(outside / "secret", work / "out" / "leak")
    os.symlink(outside, work / "out" / "dirlink")  # a symlinked directory: never walked into
    os.symlink("ok.txt", work / "out" / "alias")
    os.mkfifo(work / "out" / "pipe")
    found, refused = find_outputs(work, ["out/**"])
    names = dict(found)
    assert set(names) == {"out/ok.txt", "out/sub/n.txt", "out/alias"}
    assert names["out/alias"] == Path(os.path.realpath(work / "out" / "ok.txt"))
    text = "\n".join(refused)
    assert "out/leak" in text and "out/dirlink" in text and "leaves the working directory" in text
    assert "out/pipe" in text and "not a regular file" in text
    assert not any("deep" in line for line in refused + list(names))
