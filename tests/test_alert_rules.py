"""Prometheus config and alert rules: promtool checks them and runs their unit tests.

promtool comes with Debian's `prometheus` package (`apt-get install -y prometheus`); without it the
tests skip and say so.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from taskyard_api.settings import ApiSettings
from taskyard_executor.settings import ExecutorSettings
from taskyard_metrics.settings import MetricsSettings
from taskyard_ui.settings import UiSettings

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES_DIR = PROM_DIR / "rules"
RULES = RULES_DIR / "taskyard.rules.yml"
RULE_TESTS = RULES_DIR / "taskyard.rules.test.yml"
CONFIG = PROM_DIR / "prometheus.yml"

# Alerts about a whole process rather than a queue; every other alert names its queue.
NOT_PER_QUEUE = {
    "TaskyardServiceDown",
    "TaskyardMetricsStale",
    "TaskyardNatsDown",
    "TaskyardLabelBudgetExceeded",  # per label value (team=ml), not per queue
}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not on PATH: install Debian's prometheus package (apt-get install -y prometheus)",
)


def promtool(*args: str, cwd: Path) -> str:
    """Run promtool, fail the test with its output unless it succeeds; returns stdout + stderr."""
    proc = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed ({proc.returncode}):\n{out}"
    return out


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@needs_promtool
def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", str(RULES), cwd=ROOT)
    assert "SUCCESS" in out


@needs_promtool
def test_promtool_check_config(tmp_path: Path) -> None:
    # The config names rule files by their path in the container; point it at a copy instead.
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.rules.yml"]
    config["rule_files"] = ["rules/*.rules.yml"]
    shutil.copytree(RULES_DIR, tmp_path / "rules")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    # The glob must take the rules and leave the unit-test file alone (it is no rules file).
    assert "SUCCESS: 1 rule files found" in out, out


@needs_promtool
def test_promtool_unit_tests_of_the_rules() -> None:
    out = promtool("test", "rules", RULE_TESTS.name, cwd=RULES_DIR)
    assert "SUCCESS" in out, out
    # Printed on a success by pytest -rP: the alert rule test output for the record.
    print(out)


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown not firing"
    assert (firing | silent) - names == set(), "tests of alerts that do not exist"


def test_alerts_have_severity_summary_description_and_runbook() -> None:
    required = {
        "TaskyardJobsQueuedNoWorkers",
        "TaskyardQueueWaitHigh",
        "TaskyardJobFailureRateHigh",
        "TaskyardDeadJobs",
        "TaskyardWorkerStale",
        "TaskyardRedeliveriesRising",
        "TaskyardServiceDown",
    }
    assert required <= {a["alert"] for a in alerts()}
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        notes = alert["annotations"]
        assert {"summary", "description", "runbook"} <= set(notes), name
        if name not in NOT_PER_QUEUE:
            assert "$labels.queue" in notes["summary"], name
            assert "$labels.queue" in notes["description"], name


def test_scrape_targets_match_the_services_default_ports() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = yaml.safe_load((ROOT / "deploy" / "compose.yml").read_text())["services"]
    defaults = {
        "api": ApiSettings.model_fields["port"].default,
        "ui": UiSettings.model_fields["port"].default,
        "metrics": MetricsSettings.model_fields["port"].default,
        "executor": ExecutorSettings.model_fields["port"].default,
    }
    for name, port in defaults.items():
        job = jobs[f"taskyard-{name}"]
        if services[name].get("ports"):
            assert job["static_configs"] == [{"targets": [f"{name}:{port}"]}], name
        else:
            # No host port, so compose can scale it (`--scale executor=N`): a static target would
            # reach one replica per scrape, a different one each time. Docker's DNS lists them all.
            assert job["dns_sd_configs"] == [{"names": [name], "type": "A", "port": port}], name
    # TaskyardServiceDown watches `up{job=~"taskyard-.*"}`: every service job must match it.
    assert all(job.startswith("taskyard-") for job in jobs if job != "prometheus")
