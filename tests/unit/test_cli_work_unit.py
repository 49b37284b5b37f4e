"""The workflow and batch commands' pure parts: spec files, glob members, progress and node text,
and the input errors that exit 2 before any request is made (no server is started)."""

import pytest
from click.testing import CliRunner

from taskyard._calls import batch_done, create_batch, workflow_done
from taskyard._render_work import (
    batch_line,
    batch_members,
    depths,
    expand,
    failure_lines,
    load_spec,
    node_changes,
    node_rows,
    not_succeeded,
)
from taskyard.cli import cli

YAML_SPEC = """
name: nightly
on_failure: continue
nodes:
  scan:
    type: shell
    payload: {command: [./scan.sh]}
  report:
    type: echo
    needs: [scan]
    inputs: {found: scan/findings}
"""

DIAMOND = {
    "id": "W1",
    "status": "running",
    "counts": {"succeeded": 1, "running": 1, "blocked": 2},
    "nodes": [
        {"id": "notify", "job_id": "J4", "status": "blocked", "attempt": 0},
        {"id": "review", "job_id": "J3", "status": "running", "attempt": 1},
        {"id": "compliance", "job_id": "J2", "status": "blocked", "attempt": 0},
        {"id": "scan", "job_id": "J1", "status": "succeeded", "attempt": 1, "result": {"n": 2}},
    ],
    "edges": [
        {"from": "scan", "to": "compliance", "state": "satisfied"},
        {"from": "scan", "to": "review", "state": "satisfied"},
        {"from": "compliance", "to": "notify", "state": "open"},
        {"from": "review", "to": "notify", "state": "open"},
        {"from": "scan", "to": "notify", "state": "satisfied"},
    ],
}


def test_a_yaml_spec_may_map_node_ids_to_nodes():
    spec = load_spec(YAML_SPEC, "flow.yaml")
    assert spec["name"] == "nightly" and spec["on_failure"] == "continue"
    assert spec["nodes"] == [
        {"id": "scan", "type": "shell", "payload": {"command": ["./scan.sh"]}},
        {"id": "report", "type": "echo", "needs": ["scan"], "inputs": {"found": "scan/findings"}},
    ]


def test_a_json_spec_with_a_node_list_is_passed_as_it_is():
    text = '{"nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop", "needs": ["a"]}]}'
    assert load_spec(text, "flow.JSON") == {
        "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop", "needs": ["a"]}]
    }


@pytest.mark.parametrize(
    ("text", "name", "reason"),
    [
        ("nodes: [a, b", "f.yaml", "invalid YAML (line 1, column 13)"),
        ('{"nodes": ', "f.json", "invalid JSON"),
        ("- a\n- b\n", "f.yml", "expected a mapping with `nodes`"),
        ("name: x\n", "f.yaml", "nodes: expected a list of nodes or a mapping"),
        ("nodes: {a: 3}\n", "f.yaml", "nodes.a: expected a mapping"),
        ("nodes: {a: {id: b, type: noop}}\n", "f.yaml", "nodes.a: its id 'b' differs from its key"),
    ],
)
def test_bad_specs_are_one_line_reasons(text, name, reason):
    with pytest.raises(ValueError) as caught:
        load_spec(text, name)
    assert str(caught.value).startswith(reason), caught.value
    assert "\n" not in str(caught.value)


def test_the_placeholder_is_replaced_in_every_word_or_the_path_appended():
    assert expand(["python", "proc.py", "{}"], "data/a b.csv") == ["python", "proc.py", "data/a b.csv"]
    assert expand(["cp", "{}", "{}.bak"], "x") == ["cp", "x", "x.bak"]
    assert expand(["wc", "-l"], "x.csv") == ["wc", "-l", "x.csv"]


def test_batch_members_are_shell_jobs_with_only_the_options_given():
    members = batch_members(["a.csv", "b.csv"], ["proc", "{}"], {"queue": "etl", "priority": None})
    assert members == [
        {"type": "shell", "payload": {"command": ["proc", "a.csv"]}, "queue": "etl"},
        {"type": "shell", "payload": {"command": ["proc", "b.csv"]}, "queue": "etl"},
    ]
    assert batch_members(["a"], ["cat"], {}, "/srv/in") == [
        {"type": "shell", "payload": {"command": ["cat", "a"], "cwd": "/srv/in"}}
    ]
    body = create_batch(members, "nightly", {"on_complete": {"type": "noop"}, "on_failure": None}).body
    assert body == {"jobs": members, "name": "nightly", "on_complete": {"type": "noop"}}


def test_progress_line_counts_failures_and_eta():
    progress = {
        "id": "B1",
        "name": "nightly",
        "total": 200,
        "done": 120,
        "percent": 60.0,
        "counts": {"succeeded": 115, "failed": 3, "dead": 2, "running": 16, "queued": 64},
        "eta_seconds": 75.4,
        "failures": [
            {
                "error": "ValueError",
                "count": 5,
                "examples": [{"id": "J7", "status": "failed", "message": "bad row\n  at line 3"}],
            }
        ],
    }
    assert batch_line(progress) == (
        "batch B1 nightly · 120/200 done (60.0%) · 115 succeeded · 3 failed · 2 dead · 16 running · "
        "64 queued · ETA 1 min 15 s"
    )
    assert failure_lines(progress) == ["  5 × ValueError", "      J7  bad row at line 3"]
    assert not_succeeded(progress) == 5 and not batch_done(progress)
    finished = {**progress, "done": 200, "eta_seconds": 0.0}
    assert batch_line(finished).endswith("· complete") and batch_done(finished)


def test_nodes_are_listed_parents_first_and_changes_reported_once():
    assert depths(DIAMOND) == {"scan": 0, "compliance": 1, "review": 1, "notify": 2}
    rows = node_rows(DIAMOND)
    assert [r[0] for r in rows] == ["scan", "compliance", "review", "notify"]
    assert rows[1][1:] == ["blocked", "0", "J2", "waits for its parents"]
    assert rows[0][4] == 'result {"n":2}'
    seen: dict[str, str] = {}
    assert node_changes(seen, DIAMOND) == [
        "scan: succeeded",
        "compliance: blocked · waits for its parents",
        "review: running",
        "notify: blocked · waits for its parents",
    ]
    failed = {
        **DIAMOND,
        "nodes": [
            *DIAMOND["nodes"][:1],
            {"id": "review", "job_id": "J3", "status": "failed", "error": {"type": "Boom", "message": "x"}},
            *DIAMOND["nodes"][2:],
        ],
    }
    assert node_changes(seen, failed) == ["review: failed · Boom: x"]
    assert node_changes(seen, failed) == []
    assert not workflow_done(DIAMOND) and workflow_done({"status": "completed"})


@pytest.fixture
def runner(monkeypatch, tmp_path):
    for name in ("TASKYARD_URL", "TASKYARD_API_KEY", "TASKYARD_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_an_empty_glob_exits_2_with_one_line_before_any_request(runner):
    out = runner.invoke(cli, ["batch", "run", "--glob", "data/*.csv", "--", "python", "proc.py", "{}"])
    assert out.exit_code == 2
    assert out.output.strip().startswith("error: --glob: no file matches 'data/*.csv'")
    assert len(out.output.strip().splitlines()) == 1


def test_a_bad_spec_file_exits_2_naming_the_file(runner, tmp_path):
    (tmp_path / "flow.yaml").write_text("nodes: [a, b")
    out = runner.invoke(cli, ["workflow", "run", "flow.yaml"])
    assert out.exit_code == 2 and out.output.startswith("error: flow.yaml: invalid YAML (line 1")
    missing = runner.invoke(cli, ["workflow", "run", "nope.yaml"])
    assert missing.exit_code == 2 and "nope.yaml: cannot read" in missing.output


def test_batch_retry_asks_for_failed(runner):
    out = runner.invoke(cli, ["batch", "retry", "B1"])
    assert out.exit_code == 2 and "--failed" in out.output


def test_a_matched_file_is_staged_at_its_relative_path_or_its_base_name():
    from taskyard._files import staged_name

    assert staged_name("data/a.csv") == "data/a.csv"  # `{}` names it where the job sees it
    assert staged_name("./data/a.csv") == "data/a.csv"
    assert staged_name("/abs/data/a.csv") == "a.csv"  # an absolute path would leave the workdir
    assert staged_name("../up/a.csv") == "a.csv"
