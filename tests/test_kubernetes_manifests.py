"""The Kubernetes manifests: valid against the official schemas, consistent with each other and
with the code (CLI commands, probe paths, settings keys, metric names, the dashboard's queries)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

import marketpipe.ops.metrics  # noqa: F401  (registers every metric)
from marketpipe.cli import COMMANDS
from marketpipe.config import load_settings
from marketpipe.exchange.streams import stream_kind
from marketpipe.infra.local import find_binary
from marketpipe.services.orderbook import STREAM_KIND as DEPTH_STREAM

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests support and the newest the validator knows, strict schemas
# (unknown fields are errors).
KUBERNETES_VERSIONS = ("1.30", "1.37")
SERVICES = ("orderbook", "trades", "tickers", "markets", "gateway")
# Pairs sharded over the replicas (DESIGN §9): more replicas divide the work. The exchange stream
# each ingests, whose rate per pod its autoscaler follows.
SHARDED = {"orderbook": DEPTH_STREAM, "trades": "trade", "tickers": "ticker"}
# Only the leader of this one publishes: more replicas add standbys, never throughput.
SINGLE_LEADER = ("markets",)
SERVICE_PORT = 8080
CLUSTER_DOMAIN = "svc.cluster.local"


@dataclass(frozen=True)
class Manifest:
    path: Path
    index: int
    body: dict[str, Any]

    @property
    def label(self) -> str:
        meta = self.body["metadata"]
        return f"{self.path.relative_to(DEPLOY)}:{self.body['kind']}/{meta['name']}"


def _load() -> list[Manifest]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            found.extend(_generated(path))
            continue
        for index, body in enumerate(yaml.safe_load_all(path.read_text())):
            if body:
                found.append(Manifest(path, index, body))
    return found


def _generated(kustomization: Path) -> list[Manifest]:
    """The ConfigMaps a kustomization generates from files, as kustomize builds them."""
    spec = yaml.safe_load(kustomization.read_text())
    options = spec.get("generatorOptions", {})
    found = []
    for generator in spec.get("configMapGenerator", []):
        assert options.get("disableNameSuffixHash"), f"{kustomization}: names must stay stable"
        files = [entry.rpartition("=") for entry in generator["files"]]
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": generator["name"],
                "namespace": spec["namespace"],
                "labels": options.get("labels", {}),
            },
            "data": {
                key or name: (kustomization.parent / name).read_text() for key, _, name in files
            },
        }
        found.append(Manifest(kustomization.parent / files[0][2], 0, body))
    return found


MANIFESTS = _load()


def _all(kind: str) -> list[dict[str, Any]]:
    return [m.body for m in MANIFESTS if m.body["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    matches = [b for b in _all(kind) if b["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} named {name}, found {len(matches)}"
    return matches[0]


def _workloads() -> list[dict[str, Any]]:
    return _all("Deployment") + _all("StatefulSet")


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert "matchExpressions" not in selector, "selectors here use matchLabels only"
    match = selector.get("matchLabels", selector)
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return list(workload["spec"]["template"]["spec"]["containers"])


def _pod_dns(statefulset: dict[str, Any]) -> list[str]:
    spec, meta = statefulset["spec"], statefulset["metadata"]
    return [
        f"{meta['name']}-{i}.{spec['serviceName']}.{meta['namespace']}.{CLUSTER_DOMAIN}"
        for i in range(spec["replicas"])
    ]


def _container_port(container: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"container {container['name']} has no port named {name!r}"
    return int(ports[name])


def _nats_conf() -> str:
    return str(_one("ConfigMap", "nats-config")["data"]["nats.conf"])


def test_manifests_were_found() -> None:
    kinds = {m.body["kind"] for m in MANIFESTS}
    assert {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget"} <= kinds
    assert {"HorizontalPodAutoscaler", "ConfigMap", "Namespace"} <= kinds


def test_every_kustomization_lists_every_manifest_beside_it() -> None:
    kustomizations = sorted(DEPLOY.rglob("kustomization.yaml"))
    assert DEPLOY / "kustomization.yaml" in kustomizations
    for kustomization in kustomizations:
        folder = kustomization.parent
        spec = yaml.safe_load(kustomization.read_text())
        listed = set(spec["resources"])
        listed |= {
            f.rpartition("=")[2] for g in spec.get("configMapGenerator", []) for f in g["files"]
        }
        present = {p.name for p in folder.glob("*.yaml") if p != kustomization}
        present |= {p.name for p in folder.glob("*.json")}
        present |= {d.name for d in folder.iterdir() if (d / "kustomization.yaml").exists()}
        assert listed == present, f"{kustomization}: listed {listed}, present {present}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: m.label)
def test_manifest_is_valid_against_the_kubernetes_schema(manifest: Manifest, version: str) -> None:
    try:
        kubernetes_validate.validate(manifest.body, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{manifest.label} invalid for Kubernetes {version} at {where}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(exc.message)


def test_every_object_is_namespaced_in_a_declared_or_external_namespace() -> None:
    declared = {n["metadata"]["name"] for n in _all("Namespace")}
    for manifest in MANIFESTS:
        if manifest.body["kind"] == "Namespace":
            continue
        namespace = manifest.body["metadata"].get("namespace")
        # the adapter's and the dashboard's ConfigMaps live beside prometheus-adapter and
        # Grafana, installed separately; their folder's kustomization names that namespace
        folder = yaml.safe_load((manifest.path.parent / "kustomization.yaml").read_text())
        expected = {folder["namespace"]} if "namespace" in folder else declared
        assert namespace in expected, manifest.label


@pytest.mark.parametrize("service", SERVICES)
def test_service_deployment_runs_its_command_with_probes(service: str) -> None:
    assert service in COMMANDS
    deployment = _one("Deployment", service)
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["marketpipe", service, "--port", str(SERVICE_PORT)]
    assert _container_port(container, "http") == SERVICE_PORT
    assert {"configMapRef": {"name": "marketpipe-config"}} in container["envFrom"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(SERVICE_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_orderbook_has_a_startup_probe_long_enough_for_its_first_sync() -> None:
    (container,) = _containers(_one("Deployment", "orderbook"))
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/livez", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_every_container_is_locked_down_and_sized() -> None:
    for workload in _workloads():
        pod_security = workload["spec"]["template"]["spec"]["securityContext"]
        assert pod_security["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert pod_security["runAsUser"] > 0
        for container in _containers(workload):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, container["name"]
            assert security["allowPrivilegeEscalation"] is False, container["name"]
            assert security["capabilities"]["drop"] == ["ALL"], container["name"]
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, container["name"]
            assert container.get("livenessProbe") and container.get("readinessProbe")


def test_each_replicated_workload_has_one_disruption_budget_that_selects_only_it() -> None:
    workloads = _workloads()
    budgets = _all("PodDisruptionBudget")
    for budget in budgets:
        selected = [w for w in workloads if _selects(budget["spec"]["selector"], _pod_labels(w))]
        assert len(selected) == 1, f"PDB {budget['metadata']['name']} selects {len(selected)}"
        (workload,) = selected
        assert workload["metadata"]["name"] == budget["metadata"]["name"]
        replicas = workload["spec"]["replicas"]
        # a budget that can never be met would block every node drain
        if "minAvailable" in budget["spec"]:
            assert budget["spec"]["minAvailable"] < replicas
        else:
            assert budget["spec"]["maxUnavailable"] >= 1
    budgeted = {b["metadata"]["name"] for b in budgets}
    replicated = {w["metadata"]["name"] for w in workloads if w["spec"]["replicas"] > 1}
    assert replicated == budgeted
    assert set(SERVICES) | {"nats", "etcd"} <= budgeted


def test_etcd_budget_keeps_a_quorum() -> None:
    replicas = _one("StatefulSet", "etcd")["spec"]["replicas"]
    assert _one("PodDisruptionBudget", "etcd")["spec"]["minAvailable"] == replicas // 2 + 1


def test_autoscalers_target_existing_deployments_that_can_scale_out() -> None:
    autoscalers = _all("HorizontalPodAutoscaler")
    # a single leader does all the work: more replicas of it would add standbys, not capacity
    assert {a["spec"]["scaleTargetRef"]["name"] for a in autoscalers} == {"gateway", *SHARDED}
    for autoscaler in autoscalers:
        spec = autoscaler["spec"]
        target = spec["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        deployment = _one("Deployment", target["name"])
        assert deployment["metadata"]["namespace"] == autoscaler["metadata"]["namespace"]
        assert target["name"] not in SINGLE_LEADER
        assert spec["minReplicas"] == deployment["spec"]["replicas"]
        assert spec["maxReplicas"] > spec["minReplicas"]


def _shard_settings(service: str) -> tuple[int, int]:
    """SHARDS and STANDBYS_PER_SHARD as the service's pods get them."""
    (container,) = _containers(_one("Deployment", service))
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return int(env["MARKETPIPE_SHARDS"]), int(env["MARKETPIPE_STANDBYS_PER_SHARD"])


@pytest.mark.parametrize("service", SHARDED)
def test_sharded_services_scale_within_their_shards_and_keep_a_standby_through_disruptions(
    service: str,
) -> None:
    shards, standbys = _shard_settings(service)
    deployment = _one("Deployment", service)
    autoscaler = _one("HorizontalPodAutoscaler", service)["spec"]
    # every shard has its standbys on other pods, from the smallest count up
    assert standbys >= 1
    assert autoscaler["minReplicas"] >= standbys + 1
    # a pod beyond SHARDS would lead nothing
    assert autoscaler["maxReplicas"] <= shards
    # one pod down at a time (eviction, rollout): each shard keeps its leader or a hot standby
    budget = _one("PodDisruptionBudget", service)["spec"]
    assert "minAvailable" not in budget  # a fixed count would not follow the autoscaler
    assert 1 <= budget["maxUnavailable"] <= standbys
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # each change of the count is a rebalance: one pod at a time
    for direction in ("scaleUp", "scaleDown"):
        (policy,) = autoscaler["behavior"][direction]["policies"]
        assert (policy["type"], policy["value"]) == ("Pods", 1)


@pytest.mark.parametrize("service", SHARDED)
def test_sharded_services_settings_load(service: str) -> None:
    (container,) = _containers(_one("Deployment", service))
    data = _one("ConfigMap", "marketpipe-config")["data"]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = load_settings(environ={**data, **env})
    assert (settings.shards, settings.standbys_per_shard) == _shard_settings(service)


def _exported_metric_names() -> set[str]:
    """Every series name the services' registry exposes (counters with ``_total``, histograms
    as ``_bucket``, ``_sum`` and ``_count``)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def _selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def _matchers(selector: promql_parser.VectorSelector) -> dict[str, str]:
    return {m.name: m.value for m in selector.matchers.matchers}


def _adapter_rules() -> list[dict[str, Any]]:
    config = _one("ConfigMap", "marketpipe-adapter-config")["data"]["config.yaml"]
    return list(yaml.safe_load(config)["rules"])


def _autoscaled_metrics() -> dict[str, str]:
    """Custom metric name -> the Deployment whose autoscaler follows it."""
    wanted = {}
    for autoscaler in _all("HorizontalPodAutoscaler"):
        for metric in autoscaler["spec"]["metrics"]:
            if metric["type"] in ("Pods", "Object"):
                name = metric[metric["type"].lower()]["metric"]["name"]
                wanted[name] = autoscaler["spec"]["scaleTargetRef"]["name"]
    return wanted


def test_custom_metrics_are_exported_by_the_code_and_exposed_by_the_adapter() -> None:
    exported = _exported_metric_names()
    exposed = {}
    for rule in _adapter_rules():
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        (series,) = _selectors(rule["seriesQuery"])
        assert series.name in exported, rule["seriesQuery"]
        assert re.fullmatch(rule["name"]["matches"], series.name)
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series.name)
            .replace("<<.LabelMatchers>>", 'namespace="marketpipe",pod=~"x-.*"')
            .replace("<<.GroupBy>>", "pod")
        )
        (selector,) = _selectors(query)
        assert selector.name == series.name
        # the query keeps the series the rule found (a stream="depth" of the seriesQuery is not
        # applied by the adapter on its own)
        assert (
            _matchers(series).items() - {"namespace": "", "pod": ""}.items()
            <= _matchers(selector).items()
        )
        exposed[rule["name"]["as"]] = _matchers(selector)
    wanted = _autoscaled_metrics()
    assert "marketpipe_gateway_connections" in wanted
    assert set(wanted) == set(exposed), "every autoscaler's metric has a rule, every rule a use"
    for name, service in wanted.items():
        if service in SHARDED:
            # the stream label value the code actually counts that service's frames under
            assert exposed[name]["stream"] == stream_kind(f"btcusdt@{SHARDED[service]}")


DASHBOARD = DEPLOY / "grafana" / "marketpipe-dashboard.json"
# Grafana's own variables, as a query would see them (they are not PromQL)
GRAFANA_INTERVALS = re.compile(r"\$__(rate_)?interval|\$__range")


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        queries.extend(target["expr"] for target in panel.get("targets", []))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert found, variable["query"]
            queries.append(found.group(1))
    return [GRAFANA_INTERVALS.sub("5m", query) for query in queries]


def test_the_dashboard_is_provisioned_for_grafanas_sidecar() -> None:
    (configmap,) = [m.body for m in MANIFESTS if m.path == DASHBOARD]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"][DASHBOARD.name])["uid"] == "marketpipe"


def test_every_dashboard_panel_queries_metrics_the_services_export() -> None:
    exported = _exported_metric_names()
    queried = set()
    for query in _dashboard_queries():
        for selector in _selectors(query):  # raises on a query that is not valid PromQL
            assert selector.name in exported, f"no such metric: {selector.name} in {query}"
            queried.add(selector.name)
    # what the issue asks the dashboard to show
    for metric in (
        "marketpipe_books_live",
        "marketpipe_publish_latency_seconds_bucket",
        "marketpipe_book_resyncs_total",
        "marketpipe_rest_weight_used",
        "marketpipe_shards_leading",
        "marketpipe_gateway_connections",
        "marketpipe_gateway_dropped_messages_total",
    ):
        assert metric in queried


def test_dashboard_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


def test_services_and_probes_use_ports_their_pods_declare() -> None:
    workloads = _workloads()
    for service in _all("Service"):
        selected = [w for w in workloads if _selects(service["spec"]["selector"], _pod_labels(w))]
        assert selected, f"Service {service['metadata']['name']} selects no pods"
        for workload in selected:
            (container,) = _containers(workload)
            for port in service["spec"]["ports"]:
                target = port["targetPort"]
                if isinstance(target, str):
                    _container_port(container, target)
                else:
                    assert target in {p["containerPort"] for p in container["ports"]}
    for workload in workloads:
        for container in _containers(workload):
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                action = container.get(probe, {})
                port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                if isinstance(port, str):
                    _container_port(container, port)
            annotated = workload["spec"]["template"]["metadata"].get("annotations", {})
            if "prometheus.io/port" in annotated:
                ports = {p["containerPort"] for p in container["ports"]}
                assert int(annotated["prometheus.io/port"]) in ports


def test_gateway_service_exposes_the_websocket_port() -> None:
    service = _one("Service", "gateway")
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]


def test_nats_config_raises_max_payload_above_a_full_market_snapshot() -> None:
    found = re.search(r"^\s*max_payload:\s*(\d+)\s*$", _nats_conf(), re.MULTILINE)
    assert found, "nats.conf must set max_payload (the 1 MB default is too small)"
    assert int(found.group(1)) >= 8 * 1024 * 1024


def test_nats_routes_name_every_replica_on_the_cluster_port() -> None:
    statefulset = _one("StatefulSet", "nats")
    assert statefulset["spec"]["replicas"] == 3
    (container,) = _containers(statefulset)
    port = _container_port(container, "cluster")
    routes = re.findall(r"nats-route://([^\s,\]]+)", _nats_conf())
    assert routes == [f"{host}:{port}" for host in _pod_dns(statefulset)]
    headless = _one("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True


def test_nats_server_accepts_the_config(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(_nats_conf())
    result = subprocess.run(
        [find_binary("nats-server"), "-c", str(conf), "-t"],
        env={**os.environ, "POD_NAME": "nats-0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_etcd_initial_cluster_names_every_member() -> None:
    statefulset = _one("StatefulSet", "etcd")
    (container,) = _containers(statefulset)
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    peer = _container_port(container, "peer")
    expected = [f"{host.split('.')[0]}=http://{host}:{peer}" for host in _pod_dns(statefulset)]
    assert args["initial-cluster"].split(",") == expected
    assert args["name"] == "$(POD_NAME)"


def test_shared_config_is_valid_and_points_at_the_deployed_servers() -> None:
    data = _one("ConfigMap", "marketpipe-config")["data"]
    assert all(key.startswith("MARKETPIPE_") for key in data)
    settings = load_settings(environ=data)

    nats = _one("StatefulSet", "nats")
    client = _container_port(_containers(nats)[0], "client")
    assert settings.nats_urls == [f"nats://{host}:{client}" for host in _pod_dns(nats)]

    etcd = _one("StatefulSet", "etcd")
    client = _container_port(_containers(etcd)[0], "client")
    assert settings.etcd_endpoints == [f"http://{host}:{client}" for host in _pod_dns(etcd)]

    redis = _one("Service", "redis")
    host = f"{redis['metadata']['name']}.{redis['metadata']['namespace']}.{CLUSTER_DOMAIN}"
    assert settings.redis_url.startswith(f"redis://{host}:{redis['spec']['ports'][0]['port']}/")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_every_object() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    objects = [o for o in yaml.safe_load_all(built.stdout) if o]
    assert len(objects) == len(MANIFESTS)
    images = {c["image"] for o in objects if o["kind"] == "Deployment" for c in _containers(o)}
    assert "marketpipe" not in images, "kustomize must pin the marketpipe image tag"


def test_image_runs_marketpipe_as_the_user_the_pods_require() -> None:
    dockerfile = (DEPLOY.parents[1] / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["marketpipe"\]$', dockerfile, re.MULTILINE)
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user, "the Dockerfile must name a numeric user so runAsNonRoot can check it"
    for service in SERVICES:
        pod_security = _one("Deployment", service)["spec"]["template"]["spec"]["securityContext"]
        assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == tuple(
            int(part) for part in user.groups()
        )
