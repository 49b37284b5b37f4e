"""bench/compare.py: variants of run.py side by side in one table."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_compare", Path(__file__).resolve().parents[2] / "bench" / "compare.py"
)
assert _spec and _spec.loader
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def test_figures_line_up_by_name_and_a_missing_one_shows_a_dash():
    header = ["figure", "value", "baseline", "ratio"]
    one = [header, ["raw (msg/s)", "12,813", "-", "-"], ["e2e (jobs/s)", "2,208", "1", "0.2"]]
    cluster = [header, ["raw (msg/s)", "8,946", "-", "-"], ["pattern (jobs/s)", "6,448", "1", "0.5"]]
    assert compare.merge([("one node", one), ("cluster", cluster)]) == [
        ["figure", "one node", "cluster"],
        ["raw (msg/s)", "12,813", "8,946"],
        ["e2e (jobs/s)", "2,208", "–"],
        ["pattern (jobs/s)", "–", "6,448"],
    ]


def test_the_scale_set_compares_one_node_the_cluster_and_one_or_two_apis_on_postgresql():
    db = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    assert compare.variants("scale", db) == {
        "one node, SQLite": [],
        "3-node cluster, SQLite": ["--cluster"],
        "PostgreSQL, 1 api": ["--db", db],
        "PostgreSQL, 2 apis": ["--db", db, "--apis", "2"],
    }
    assert compare.variants("durability", None)["sync_interval always"] == ["--nats-sync", "always"]
    with pytest.raises(SystemExit):
        compare.variants("scale", None)
