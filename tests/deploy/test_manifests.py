"""deploy/k8s: every resource file and the kustomize output of the base and the dev overlay
validate against the Kubernetes JSON schemas, and agree with each other and with the code."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import nats
import pytest
import trustme
import yaml

from sluiceway.common import natsauth, principals
from sluiceway.common.bus import LANES, Names, TaskConsumerSettings, lane_durable
from sluiceway.common.domain.access import Role
from sluiceway.common.localnats import LocalNats
from tests.support import certs, deploy
from tests.support.deploy import BUILDS, KUBERNETES_VERSIONS, find, pod_specs, render

# the trigger metadata of KEDA's nats-jetstream scaler (KEDA docs, scalers/nats-jetstream)
NATS_JETSTREAM_METADATA = {
    "natsServerMonitoringEndpoint",
    "account",
    "stream",
    "consumer",
    "lagThreshold",
    "activationLagThreshold",
    "useHttps",
}
# the workloads that serve a gRPC API: Control (planner), Tracker (tracker)
API_WORKLOADS = (("Deployment", "planner"), ("StatefulSet", "tracker"))
# the setting of the address each API serves on (TLS in the base)
API_ADDR = {"planner": "SLUICEWAY_CONTROL_ADDR", "tracker": "SLUICEWAY_TRACKER_ADDR"}
# every service's workload
SERVICE_WORKLOADS = (
    ("Deployment", "planner"),
    ("Deployment", "worker"),
    ("Deployment", "committer"),
    ("StatefulSet", "tracker"),
)
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# the bearer token of the dev overlay's one admin: published, for development only
DEV_TOKEN = "slw_dev_only_not_a_secret"


def validate(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def test_kustomize_is_kubectls_built_in_kustomize_v5() -> None:
    out = subprocess.run(
        [deploy.tool("kubectl"), "version", "--client", "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(out)["kustomizeVersion"].startswith("v5.")


@pytest.mark.parametrize(
    "path", deploy.resource_files(), ids=lambda p: str(p.relative_to(deploy.K8S))
)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_file_validates(path: Path, version: str) -> None:
    docs = deploy.load_file(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            continue  # a CRD: test_the_scaled_object_validates_against_kedas_schema
        validate(doc, version)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kustomize_output_validates(build: str, version: str) -> None:
    objects = render(build)
    assert len(objects) > 15
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            continue
        validate(obj, version)


def test_the_validation_refuses_a_misspelt_field() -> None:
    """The control: strict validation catches what a typo in a manifest would look like."""
    planner = copy.deepcopy(find(render("base"), "Deployment", "planner"))
    container = planner["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grcp"] = container["readinessProbe"].pop("grpc")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(planner, KUBERNETES_VERSIONS[-1])


# ---- KEDA -----------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Refuse unknown fields wherever the schema lists an object's fields (as the API server's
    structural-schema pruning would drop them silently)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def keda_schema() -> dict[str, Any]:
    """The ScaledObject schema of KEDA 2.16, from the models generated from KEDA's CRDs (the
    cloudcoil-models-keda package), made strict."""
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    schema = ScaledObject.model_json_schema(by_alias=True, mode="validation")
    return _strict(schema)  # type: ignore[no-any-return]


def keda_errors(obj: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(keda_schema())
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(obj)]


def test_the_scaled_object_validates_against_kedas_schema() -> None:
    scaled = find(render("base"), "ScaledObject", "worker")
    assert keda_errors(scaled) == []
    assert keda_errors(deploy.load_file(deploy.K8S / "base" / "worker-scaledobject.yaml")[0]) == []

    broken = copy.deepcopy(scaled)
    broken["spec"]["minReplicas"] = broken["spec"].pop("minReplicaCount")
    assert keda_errors(broken), "the schema must refuse an unknown field"


def test_the_scaled_object_scales_the_workers_on_the_worker_consumer() -> None:
    objects = render("base")
    scaled = find(objects, "ScaledObject", "worker")
    target = scaled["spec"]["scaleTargetRef"]
    worker = find(objects, target["kind"], target["name"])
    assert worker["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "sluiceway/worker"
    )
    assert "replicas" not in worker["spec"], "the autoscaler owns the worker count"

    triggers = scaled["spec"]["triggers"]
    config = find(objects, "ConfigMap", "sluiceway-config")["data"]
    # one trigger per priority lane, named as the workers declare their consumers
    base = TaskConsumerSettings().durable
    assert sorted(trigger["metadata"]["consumer"] for trigger in triggers) == sorted(
        lane_durable(base, lane) for lane in LANES
    )
    for trigger in triggers:
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert set(meta) <= NATS_JETSTREAM_METADATA
        assert all(isinstance(v, str) for v in meta.values())
        assert meta["stream"] == Names(config["SLUICEWAY_NAMESPACE"]).tasks_stream
        assert int(meta["lagThreshold"]) > 0
    endpoints = {trigger["metadata"]["natsServerMonitoringEndpoint"] for trigger in triggers}
    assert len(endpoints) == 1
    meta = triggers[0]["metadata"]

    # KEDA asks a clustered consumer's leader at <server_name>.<endpoint>: the endpoint is the
    # headless Service's FQDN with the monitoring port, and server_name is the pod name
    host, port = meta["natsServerMonitoringEndpoint"].rsplit(":", 1)
    nats = find(objects, "StatefulSet", "nats")
    namespace = nats["metadata"]["namespace"]
    assert host == f"{nats['spec']['serviceName']}.{namespace}.svc.cluster.local"
    ports = {
        p["name"]: p["containerPort"]
        for p in nats["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert int(port) == ports["monitor"]
    conf = find(objects, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert re.search(r"^server_name: \$POD_NAME$", conf, re.M)


def test_without_keda_an_hpa_scales_the_workers_instead() -> None:
    dev = render("dev")
    assert not [o for o in dev if o["kind"] == "ScaledObject"]
    hpa = find(dev, "HorizontalPodAutoscaler", "worker")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "worker",
    }
    base_scaled = find(render("base"), "ScaledObject", "worker")["spec"]
    assert hpa["spec"]["maxReplicas"] == base_scaled["maxReplicaCount"]
    assert not [o for o in render("base") if o["kind"] == "HorizontalPodAutoscaler"]


# ---- NATS -----------------------------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDS)
def test_the_nats_cluster_routes_clients_and_replicas_agree(build: str) -> None:
    objects = render(build)
    nats = find(objects, "StatefulSet", "nats")
    replicas = nats["spec"]["replicas"]
    assert replicas == 3
    headless = find(objects, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    container = nats["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    pods = [f"nats-{i}.{nats['spec']['serviceName']}" for i in range(replicas)]

    conf = find(objects, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert re.findall(r"nats://(\S+):(\d+)", conf) == [(p, str(ports["cluster"])) for p in pods]
    assert f"listen: 0.0.0.0:{ports['client']}" in conf
    assert f"http: 0.0.0.0:{ports['monitor']}" in conf
    store = re.search(r"store_dir: (\S+)", conf)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert store and store.group(1).startswith(mounts["data"] + "/")
    assert [t["metadata"]["name"] for t in nats["spec"]["volumeClaimTemplates"]] == ["data"]

    config = find(objects, "ConfigMap", "sluiceway-config")["data"]
    assert config["SLUICEWAY_NATS_URL"].split(",") == [
        f"nats://{p}:{ports['client']}" for p in pods
    ]
    assert int(config["SLUICEWAY_STREAM_REPLICAS"]) == replicas


# ---- cross-checks ---------------------------------------------------------------------------


def _env_names(objects: tuple[dict[str, Any], ...], container: dict[str, Any]) -> set[str]:
    """Every variable the container gets: env entries and the keys of envFrom sources."""
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(find(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        if "secretRef" in source and not source["secretRef"].get("optional"):
            name = source["secretRef"]["name"]
            try:
                secret = find(objects, "Secret", name)
            except LookupError:
                assert name in deploy.EXTERNAL_SECRETS
                continue
            names |= set(secret.get("data", {})) | set(secret.get("stringData", {}))
    return names


@pytest.mark.parametrize("build", BUILDS)
def test_every_variable_given_to_a_service_is_one_it_reads(build: str) -> None:
    objects = render(build)
    known = deploy.names_read_by_the_code() | deploy.otel_names() | deploy.url_env_names()
    for workload, spec in pod_specs(objects):
        for container in spec["containers"]:
            if not deploy.is_sluiceway(container):
                continue
            names = _env_names(objects, container)
            # a variable used only to build another one: $(POD_NAME) in SLUICEWAY_INSTANCE
            expanded = {
                ref
                for e in container.get("env", [])
                for ref in re.findall(r"\$\((\w+)\)", e.get("value", ""))
            }
            unknown = names - known - expanded
            assert not unknown, f"{workload['metadata']['name']}: nothing reads {sorted(unknown)}"
            assert "SLUICEWAY_CRASH_AT" not in names, "crash points are for the fault tests only"


def test_the_variable_check_refuses_a_misspelt_name() -> None:
    known = deploy.names_read_by_the_code() | deploy.otel_names()
    assert "SLUICEWAY_NATS_URL" in known and "SLUICEWAY_NATS_URLS" not in known
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in known and "OTEL_EXPORTER_OTLP_ENDPOIN" not in known


@pytest.mark.parametrize("build", BUILDS)
def test_probes_and_addresses_use_the_ports_the_containers_expose(build: str) -> None:
    objects = render(build)
    config = find(objects, "ConfigMap", "sluiceway-config")["data"]
    # every service serves grpc.health.v1 in plaintext on SLUICEWAY_HEALTH_ADDR and is probed
    # there by the kubelet's native grpc probe (which speaks no TLS)
    health_port = deploy.port_of(config["SLUICEWAY_HEALTH_ADDR"])
    assert config["SLUICEWAY_HEALTH_ADDR"].startswith("0.0.0.0:")
    seen = set()
    for workload, spec in pod_specs(objects):
        for container in spec["containers"]:
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind)
                if kind == "startupProbe" and not deploy.is_sluiceway(container) and not probe:
                    continue
                assert probe, f"{workload['metadata']['name']}: no {kind}"
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if handler in probe:
                        port = probe[handler]["port"]
                        assert port in ports or port in ports.values(), (
                            workload["metadata"]["name"],
                            kind,
                        )
            if not deploy.is_sluiceway(container):
                continue
            service = container["image"].split("/", 1)[1].split(":", 1)[0]
            seen.add(service)
            for kind in PROBES:
                assert container[kind]["grpc"]["port"] == health_port, (service, kind)
            assert ports["grpc-health"] == health_port
            metrics = deploy.port_of(config["SLUICEWAY_METRICS_ADDR"])
            assert ports["metrics"] == metrics
            annotations = workload["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true"
            assert int(annotations["prometheus.io/port"]) == metrics
            assert annotations["prometheus.io/path"] == "/metrics"
    assert seen == set(deploy.SERVICES)


@pytest.mark.parametrize("build", BUILDS)
def test_services_select_pods_and_target_their_named_ports(build: str) -> None:
    objects = render(build)
    for svc in (o for o in objects if o["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        pods = [
            spec
            for workload, spec in pod_specs(objects)
            if selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            names = {p.get("name") for spec in pods for c in spec["containers"] for p in c["ports"]}
            assert port["targetPort"] in names, (svc["metadata"]["name"], port)


@pytest.mark.parametrize("build", BUILDS)
def test_every_referenced_config_map_and_secret_exists(build: str) -> None:
    objects = render(build)
    missing: set[tuple[str, str]] = set()

    def need(kind: str, name: str) -> None:
        try:
            find(objects, kind, name)
        except LookupError:
            missing.add((kind, name))

    for _, spec in pod_specs(objects):
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    need("ConfigMap", source["configMapRef"]["name"])
                # an optional secret (the webhook's) is one the deployment may leave out
                if "secretRef" in source and not source["secretRef"].get("optional"):
                    need("Secret", source["secretRef"]["name"])
            for e in container.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    need("Secret", ref["secretKeyRef"]["name"])
                    if (("Secret", ref["secretKeyRef"]["name"])) not in missing:
                        secret = find(objects, "Secret", ref["secretKeyRef"]["name"])
                        assert ref["secretKeyRef"]["key"] in secret["data"]
                if "configMapKeyRef" in ref:
                    need("ConfigMap", ref["configMapKeyRef"]["name"])
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                need("ConfigMap", volume["configMap"]["name"])
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                need("Secret", name)
                if ("Secret", name) not in missing:  # the keys the volume projects exist
                    data = find(objects, "Secret", name)["data"]
                    for item in volume["secret"].get("items", []):
                        assert item["key"] in data, (name, item)
            if "persistentVolumeClaim" in volume:
                need("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        if spec.get("serviceAccountName"):
            need("ServiceAccount", spec["serviceAccountName"])
    if build == "base":
        assert missing == {("Secret", name) for name in deploy.EXTERNAL_SECRETS}
    else:
        assert missing == set()


@pytest.mark.parametrize("build", BUILDS)
def test_every_pod_is_hardened_and_bounded(build: str) -> None:
    objects = render(build)
    dockerfile = deploy.parse_dockerfile(deploy.DOCKERFILE.read_text())
    image_uid = int(str(dockerfile.last("worker", "USER")).split(":")[0])
    for workload, spec in pod_specs(objects):
        name = workload["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert isinstance(pod["runAsUser"], int) and pod["runAsUser"] > 0, name
        assert isinstance(pod["runAsGroup"], int) and pod["runAsGroup"] > 0, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            if build == "base" or not deploy.is_sluiceway(container):
                assert sc["readOnlyRootFilesystem"] is True, name
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, (name, bound)
            if deploy.is_sluiceway(container):
                assert pod["runAsUser"] == image_uid, name
                assert ":" in container["image"], f"{name}: untagged image"
            assert not container["image"].endswith(":latest"), name


@pytest.mark.parametrize("build", BUILDS)
def test_every_workload_has_a_disruption_budget(build: str) -> None:
    objects = render(build)
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for workload in deploy.workloads(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        matching = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, workload["metadata"]["name"]
        assert matching[0]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("build", BUILDS)
def test_every_object_carries_the_recommended_labels(build: str) -> None:
    objects = render(build)
    namespaces = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    assert namespaces == {"sluiceway"}
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "sluiceway", obj["metadata"]["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize"
        assert labels.get("app.kubernetes.io/name"), obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "sluiceway", obj["metadata"]["name"]
    for workload in deploy.workloads(objects):
        template = workload["spec"]["template"]["metadata"]["labels"]
        assert {
            "app.kubernetes.io/name",
            "app.kubernetes.io/component",
            "app.kubernetes.io/version",
        } <= set(template)


@pytest.mark.parametrize("build", BUILDS)
def test_trackers_keep_their_projection_on_their_own_volume(build: str) -> None:
    objects = render(build)
    tracker = find(objects, "StatefulSet", "tracker")
    config = find(objects, "ConfigMap", "sluiceway-config")["data"]
    container = tracker["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in tracker["spec"]["volumeClaimTemplates"]]
    db = config["SLUICEWAY_TRACKER_DB"]
    assert any(db.startswith(mounts[c] + "/") for c in claims)
    assert find(objects, "Service", tracker["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    for single in ("planner", "committer"):
        assert find(objects, "Deployment", single)["spec"]["replicas"] == 1


def test_the_dev_overlay_is_small_and_tagged_for_tilt() -> None:
    dev = render("dev")
    assert find(dev, "StatefulSet", "tracker")["spec"]["replicas"] == 1
    images = {
        c["image"]
        for _, spec in pod_specs(dev)
        for c in spec["containers"]
        if deploy.is_sluiceway(c)
    }
    assert images == {f"sluiceway/{s}:dev" for s in deploy.SERVICES}
    base_worker = find(render("base"), "Deployment", "worker")["spec"]["template"]["spec"][
        "containers"
    ][0]
    dev_worker = find(dev, "Deployment", "worker")["spec"]["template"]["spec"]["containers"][0]
    assert yaml.safe_dump(dev_worker["resources"]["requests"]) != yaml.safe_dump(
        base_worker["resources"]["requests"]
    )


# ---- authentication and TLS of the APIs ----------------------------------------------------


def _named(name: str, expected: str) -> bool:
    """`name` is `expected`, or `expected` with the hash suffix of a generated object."""
    return re.fullmatch(rf"{re.escape(expected)}(-[a-z0-9]{{10}})?", name) is not None


def _api_pod(
    objects: tuple[dict[str, Any], ...], kind: str, name: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, container) of a service's workload: its one Sluiceway container."""
    spec = find(objects, kind, name)["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if deploy.is_sluiceway(c)]
    return spec, container


def _env_values(container: dict[str, Any]) -> dict[str, Any]:
    """The container's env entries by name: the value as YAML typed it (a bare `on` is True)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _secret_file(spec: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at `path`, which must be in a Secret volume mounted
    read-only as a directory: a subPath mount is never updated when the Secret is."""
    mounts = [m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"] + "/")]
    assert len(mounts) == 1, f"{path} is on {len(mounts)} mounts, not one"
    (mount,) = mounts
    assert "subPath" not in mount and "subPathExpr" not in mount, mount
    assert mount.get("readOnly") is True, mount
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert "secret" in volume, f"{path} is not in a Secret volume: {volume}"
    relative = path[len(mount["mountPath"]) + 1 :]
    items = volume["secret"].get("items")
    if items is None:
        key = relative
    else:
        (key,) = [item["key"] for item in items if item["path"] == relative]
    assert "/" not in key, path
    return volume["secret"]["secretName"], key


def _auth_settings(objects: tuple[dict[str, Any], ...]) -> list[tuple[str, Any]]:
    """Every place in the objects that sets SLUICEWAY_AUTH, with the value it sets: env entries
    (a valueFrom counts as set from elsewhere) and ConfigMap or Secret keys."""
    found: list[tuple[str, Any]] = []

    def walk(node: Any, where: str, secret_data: bool) -> None:
        if isinstance(node, dict):
            if node.get("name") == "SLUICEWAY_AUTH" and ("value" in node or "valueFrom" in node):
                found.append((where, node.get("value", node.get("valueFrom"))))
            if "SLUICEWAY_AUTH" in node:
                value = node["SLUICEWAY_AUTH"]
                if secret_data and isinstance(value, str):
                    value = base64.b64decode(value).decode()
                found.append((where, value))
            for key, value in node.items():
                walk(value, where, secret_data or (key == "data" and where.startswith("Secret/")))
        elif isinstance(node, list):
            for value in node:
                walk(value, where, secret_data)

    for obj in objects:
        walk(obj, f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}", False)
    return found


# `SLUICEWAY_AUTH=x`, `SLUICEWAY_AUTH: x`, and `name: SLUICEWAY_AUTH` followed by `value: x`
_AUTH_IN_TEXT = (
    re.compile(r"""\bSLUICEWAY_AUTH["']?[ \t]*[=:][ \t]*["']?([^"'\s,;)]*)"""),
    re.compile(r"""name:\s*["']?SLUICEWAY_AUTH["']?\s*\n\s*value:\s*["']?([^"'\s]*)"""),
)


def _auth_values_in_text(text: str) -> list[str]:
    return [m.group(1) for pattern in _AUTH_IN_TEXT for m in pattern.finditer(text)]


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(("kind", "name"), API_WORKLOADS)
def test_the_apis_authenticate_with_a_principals_secret_mounted_as_a_directory(
    build: str, kind: str, name: str
) -> None:
    objects = render(build)
    spec, container = _api_pod(objects, kind, name)
    env = _env_values(container)
    assert env["SLUICEWAY_AUTH"] == "on", "the string on: a bare `on` in YAML is a boolean"
    secret, key = _secret_file(spec, container, env["SLUICEWAY_AUTH_PRINCIPALS_FILE"])
    assert _named(secret, "sluiceway-principals"), secret
    assert key == "principals.yaml"
    if build == "base":
        # made outside of git: the base ships no principal and no token
        assert not [
            o
            for o in objects
            if o["kind"] == "Secret" and _named(o["metadata"]["name"], "sluiceway-principals")
        ]
    else:
        assert key in find(objects, "Secret", secret)["data"]


@pytest.mark.parametrize(("kind", "name"), API_WORKLOADS)
def test_the_base_serves_the_apis_with_tls_from_a_mounted_certificate_secret(
    kind: str, name: str
) -> None:
    objects = render("base")
    spec, container = _api_pod(objects, kind, name)
    env = _env_values(container)
    cert = _secret_file(spec, container, env["SLUICEWAY_TLS_CERT_FILE"])
    key = _secret_file(spec, container, env["SLUICEWAY_TLS_KEY_FILE"])
    # the keys of a kubernetes.io/tls Secret, as cert-manager and `kubectl create secret tls`
    # write them
    assert cert == ("sluiceway-api-tls", "tls.crt")
    assert key == ("sluiceway-api-tls", "tls.key")
    (volume,) = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == cert[0]]
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the key is not for every user"
    # the kubelet's grpc probe cannot speak TLS: nothing probes the (TLS) API port
    config = find(objects, "ConfigMap", "sluiceway-config")["data"]
    api_port = deploy.port_of(config[API_ADDR[name]])
    for probe in PROBES:
        assert container[probe]["grpc"]["port"] != api_port, probe


@pytest.mark.parametrize("build", BUILDS)
def test_every_service_is_probed_by_native_grpc_on_its_plaintext_health_port_not_its_api_port(
    build: str,
) -> None:
    """The kubelet's grpc probe speaks no TLS, and the APIs serve TLS in the base: so every
    service, the planner and the tracker too, answers grpc.health.v1 on a plaintext health-only
    port (SLUICEWAY_HEALTH_ADDR), and that port is the one every probe asks."""
    for service in deploy.SERVICES:
        main = deploy.ROOT / "services" / service / "src" / "sluiceway" / service / "main.py"
        assert "settings.health_addr" in main.read_text(), f"{service} serves no health port"
    objects = render(build)
    config = find(objects, "ConfigMap", "sluiceway-config")["data"]
    health_port = deploy.port_of(config["SLUICEWAY_HEALTH_ADDR"])
    api_ports = {deploy.port_of(config[setting]) for setting in API_ADDR.values()}
    assert health_port not in api_ports
    for kind, name in SERVICE_WORKLOADS:
        _, container = _api_pod(objects, kind, name)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc-health"] == health_port, name
        for probe in PROBES:
            assert set(container[probe]) & {"grpc", "tcpSocket", "httpGet", "exec"} == {"grpc"}
            # the tracker's readiness asks for the Tracker service by name: NOT_SERVING while
            # its read model cannot catch up (tests/integration/test_retention.py)
            wanted = {"port": health_port}
            if (name, probe) == ("tracker", "readinessProbe"):
                wanted["service"] = "sluiceway.v1.Tracker"
            assert container[probe]["grpc"] == wanted, (name, probe)
        if name in API_ADDR:
            api_port = deploy.port_of(config[API_ADDR[name]])
            assert api_port in ports.values() and api_port != health_port, name
            served_with_tls = "SLUICEWAY_TLS_CERT_FILE" in _env_values(container)
            assert served_with_tls == (build == "base"), name


@pytest.mark.parametrize(("kind", "name"), API_WORKLOADS)
def test_the_dev_apis_are_plaintext_but_still_authenticated(kind: str, name: str) -> None:
    dev = render("dev")
    spec, container = _api_pod(dev, kind, name)
    env = _env_values(container)
    assert not {n for n in env if n.startswith("SLUICEWAY_TLS_")}
    assert not [
        v
        for v in spec["volumes"]
        if _named(v.get("secret", {}).get("secretName", ""), "sluiceway-api-tls")
    ]
    assert not [
        m for m in container["volumeMounts"] if m["mountPath"].startswith("/etc/sluiceway/tls")
    ]
    assert env["SLUICEWAY_AUTH"] == "on"
    assert env["SLUICEWAY_AUTH_PRINCIPALS_FILE"]


@pytest.mark.parametrize("build", BUILDS)
def test_no_rendered_object_turns_authentication_off(build: str) -> None:
    settings = _auth_settings(render(build))
    # set explicitly on both APIs, and to the string "on" wherever it is set
    assert {where for where, _ in settings} >= {"Deployment/planner", "StatefulSet/tracker"}
    assert all(value == "on" for _, value in settings), settings


def test_no_file_of_the_deployment_turns_authentication_off() -> None:
    files = [p for p in (deploy.ROOT / "deploy").rglob("*") if p.is_file()] + [deploy.TILTFILE]
    seen = []
    for path in files:
        for value in _auth_values_in_text(path.read_text()):
            seen.append(value)
            assert value == "on", f"{path.relative_to(deploy.ROOT)}: SLUICEWAY_AUTH={value}"
    assert seen.count("on") >= 2  # planner.yaml and tracker.yaml: the scan does see them
    # as the files are read without kustomize (which writes a bare `on` back as a string):
    # `kubectl apply -f` and YAML 1.1 read a bare `on` as a boolean
    for path in deploy.K8S.rglob("*.yaml"):
        for where, value in _auth_settings(tuple(deploy.load_file(path))):
            assert value == "on", f"{path.relative_to(deploy.ROOT)}: {where} sets {value!r}"


def test_the_authentication_checks_refuse_off_and_a_bare_yaml_on() -> None:
    """The control: each form a manifest could turn authentication off in is caught."""
    planner = copy.deepcopy(find(render("base"), "Deployment", "planner"))
    container = planner["spec"]["template"]["spec"]["containers"][0]
    (auth,) = [e for e in container["env"] if e["name"] == "SLUICEWAY_AUTH"]
    for value in ("off", True, "false"):
        auth["value"] = value
        assert _auth_settings((planner,)) == [("Deployment/planner", value)]
    config = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"SLUICEWAY_AUTH": "off"}}
    assert _auth_settings((config,)) == [("ConfigMap/c", "off")]
    secret = {
        "kind": "Secret",
        "metadata": {"name": "s"},
        "data": {"SLUICEWAY_AUTH": base64.b64encode(b"off").decode()},
    }
    assert _auth_settings((secret,)) == [("Secret/s", "off")]
    for text in (
        "SLUICEWAY_AUTH=off\n",
        "      - SLUICEWAY_AUTH=off\n",
        "ENV SLUICEWAY_AUTH=off PYTHONUNBUFFERED=1\n",
        "SLUICEWAY_AUTH: 'off'\n",
        '- name: SLUICEWAY_AUTH\n  value: "off"\n',
        "- name: SLUICEWAY_AUTH\n  value: off\n",
    ):
        assert _auth_values_in_text(text) == ["off"], text
    assert _auth_values_in_text("SLUICEWAY_AUTH_PRINCIPALS_FILE=/x\n") == []


def test_the_secret_mount_check_refuses_a_subpath_a_writable_mount_and_a_config_map() -> None:
    """The control: what would keep a Secret update from reaching the services is caught."""
    spec, container = _api_pod(render("base"), "Deployment", "planner")
    path = _env_values(container)["SLUICEWAY_AUTH_PRINCIPALS_FILE"]
    assert _secret_file(spec, container, path) == ("sluiceway-principals", "principals.yaml")
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    for broken_mount, broken_volume, refusal in (
        ({**mount, "subPath": "auth"}, volume, "subPath"),
        ({**mount, "readOnly": False}, volume, "'readOnly': False"),
        (mount, {"name": volume["name"], "configMap": {"name": "x"}}, "not in a Secret volume"),
    ):
        with pytest.raises(AssertionError, match=refusal):
            _secret_file(
                {**spec, "volumes": [broken_volume]},
                {**container, "volumeMounts": [broken_mount]},
                path,
            )


def test_the_dev_principals_file_has_one_admin_with_the_documented_dev_token() -> None:
    secret = find(render("dev"), "Secret", "sluiceway-principals")
    text = base64.b64decode(secret["data"]["principals.yaml"]).decode()
    doc = yaml.safe_load(text)
    assert set(doc) == {"principals"}
    (admin,) = doc["principals"]
    assert re.fullmatch(principals.NAME_PATTERN, admin["name"])
    assert admin["role"] == "admin"
    (token,) = admin["tokens"]
    assert re.fullmatch(r"[0-9a-f]{64}", token["sha256"])
    assert token["sha256"] == hashlib.sha256(DEV_TOKEN.encode()).hexdigest()
    assert token.get("revoked", False) is False and "expires_at" not in token

    # the services' own reading of the file: the dev token is the admin, a near miss is nobody
    directory = principals.parse(text, "overlays/dev/principals.yaml")
    now = principals.utcnow()
    caller = principals.identify(directory, f"Bearer {DEV_TOKEN}", None, now)
    assert (caller.name, caller.role) == (admin["name"], Role.ADMIN)
    with pytest.raises(principals.AuthFailure):
        principals.identify(directory, f"Bearer {DEV_TOKEN}x", None, now)

    # published where a developer looks, and said to be for development only
    for path in (
        deploy.BUILDS["dev"] / "kustomization.yaml",
        deploy.BUILDS["dev"] / "principals.yaml",
        deploy.K8S / "README.md",
        deploy.TILTFILE,
    ):
        assert DEV_TOKEN in path.read_text(), path


# ---- NATS: one user per service, TLS ------------------------------------------------------


def _nats_pod(objects: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, container) of nats-server."""
    spec = find(objects, "StatefulSet", "nats")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def _nats_files(objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The nats-config ConfigMap: the files the pod sees in one directory, /etc/nats."""
    files: dict[str, str] = find(objects, "ConfigMap", "nats-config")["data"]
    return files


def _readme_passwords() -> dict[str, str]:
    """Passwords made as deploy/k8s/README.md says, `openssl rand -base64 24`: 24 random bytes,
    in base64 (test_the_secrets_the_base_needs_are_documented_with_how_to_make_them)."""
    return {s: base64.b64encode(os.urandom(24)).decode() for s in deploy.SERVICES}


def _nats_environment(build: str, objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """nats-server's environment as its pod gets it: POD_NAME and the four passwords (the dev
    overlay's own, or new ones made as the README says for the base)."""
    if build == "dev":
        data = find(objects, "Secret", "sluiceway-nats-users")["data"]
        passwords = {s: base64.b64decode(data[s]).decode() for s in deploy.SERVICES}
    else:
        passwords = _readme_passwords()
    variables = {deploy.nats_password_variable(s): p for s, p in passwords.items()}
    return {"POD_NAME": "nats-0", **variables}


def _write_nats_config(
    objects: tuple[dict[str, Any], ...], directory: Path, ca: trustme.CA
) -> Path:
    """The nats-config files written to `directory` as the pod mounts them, with a certificate
    of `ca` (for the pods' names and 127.0.0.1) where the pod mounts the nats-tls Secret, when it
    does: tls.conf's paths are moved to it. Returns the path of nats.conf."""
    files = _nats_files(objects)
    spec, container = _nats_pod(objects)
    tls_volumes = {
        v["name"] for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "nats-tls"
    }
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in tls_volumes]
    for mount in mounts:
        leaf = ca.issue_cert("127.0.0.1", "localhost", "nats-0.nats-headless")
        certs.write_leaf(leaf, directory / "tls")
        assert f"{mount}/" in files["tls.conf"], "tls.conf reads no file of the nats-tls mount"
        files = {**files, "tls.conf": files["tls.conf"].replace(f"{mount}/", f"{directory}/tls/")}
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory / "nats.conf"


def _nats_server_test(conf: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`nats-server -t`: parse the configuration (included files, variables, certificate) and
    exit."""
    return subprocess.run(
        [deploy.tool("nats-server"), "-t", "-c", str(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _unquoted_variables(text: str) -> set[str]:
    """The $VARIABLEs a NATS config expands: outside comments and quoted strings."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return set(re.findall(r"\$(\w+)", re.sub(r'"[^"\n]*"', "", "\n".join(lines))))


@pytest.mark.parametrize("build", BUILDS)
def test_the_nats_config_with_its_users_and_tls_is_accepted_by_nats_server(
    build: str, tmp_path: Path
) -> None:
    objects = render(build)
    conf = _write_nats_config(objects, tmp_path, trustme.CA())
    env = _nats_environment(build, objects)
    result = _nats_server_test(conf, env)
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stderr + result.stdout

    # the controls: nats-server does read the included users file, each password from the
    # environment, and the certificate files; and it refuses a misspelt setting
    without = {k: v for k, v in env.items() if k != "TRACKER_NATS_PASSWORD"}
    refused = _nats_server_test(conf, without)
    assert refused.returncode != 0 and "TRACKER_NATS_PASSWORD" in refused.stderr
    if build == "base":
        (tmp_path / "tls" / "tls.key").unlink()
        refused = _nats_server_test(conf, env)
        assert refused.returncode != 0 and "tls.key" in refused.stderr
    conf.write_text(conf.read_text().replace("store_dir", "store_dri"))
    refused = _nats_server_test(conf, env)
    assert refused.returncode != 0 and "store_dri" in refused.stderr


def test_the_nats_users_file_is_what_natsauth_generates() -> None:
    """auth.conf is generated from natsauth.permissions, the one place that says what each
    service may do on NATS: the committed file is its current output."""
    committed = deploy.NATS_AUTH_CONF.read_text()
    assert committed == deploy.nats_auth_conf(), (
        f"{deploy.NATS_AUTH_CONF.relative_to(deploy.ROOT)} is not what the code generates:"
        f" regenerate it, from the repository's root, with  {deploy.NATS_AUTH_REGENERATE}"
    )
    assert deploy.NATS_AUTH_REGENERATE in committed.splitlines()[2]
    for build in BUILDS:
        assert _nats_files(render(build))["auth.conf"] == committed, build

    # one user per service, each password a variable: unquoted, so nats-server expands it
    assert re.findall(r'^\s*"user": "(\w+)",$', committed, re.M) == list(natsauth.SERVICES)
    assert re.findall(r'^\s*"password": (.*),$', committed, re.M) == [
        f"${deploy.nats_password_variable(s)}" for s in natsauth.SERVICES
    ]
    # users of the global account: the one KEDA's triggers name ($G)
    assert "accounts" not in committed
    for trigger in find(render("base"), "ScaledObject", "worker")["spec"]["triggers"]:
        assert trigger["metadata"]["account"] == "$G"


def test_the_nats_users_check_refuses_a_file_the_code_no_longer_makes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control: the expected text is made from the permissions as the code has them now,
    so a permission changed in natsauth makes the committed file stale."""
    committed = deploy.NATS_AUTH_CONF.read_text()
    worker = natsauth.APPENDS["worker"]
    monkeypatch.setitem(natsauth.APPENDS, "worker", (*worker, "manifest_committed.*"))
    changed = deploy.nats_auth_conf()
    assert changed != committed
    worker_user = changed.split('"user": "worker"')[1].split('"user": "committer"')[0]
    assert '"sluiceway.runs.*.manifest_committed.*"' in worker_user


@pytest.mark.parametrize("build", BUILDS)
def test_nats_server_gets_exactly_the_four_passwords_from_the_users_secret(build: str) -> None:
    objects = render(build)
    _, container = _nats_pod(objects)
    assert "envFrom" not in container
    from_secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {
        name: (re.sub(r"-[a-z0-9]{10}$", "", ref["name"]), ref["key"])
        for name, ref in from_secrets.items()
    } == {deploy.nats_password_variable(s): ("sluiceway-nats-users", s) for s in deploy.SERVICES}
    for ref in from_secrets.values():
        assert _named(ref["name"], "sluiceway-nats-users") and ref.get("optional") is not True

    # every variable the config expands is in nats-server's environment, and nothing else is
    files = _nats_files(objects)
    expanded = set().union(*(_unquoted_variables(text) for text in files.values()))
    assert expanded == {"POD_NAME", *from_secrets}
    assert {e["name"] for e in container["env"]} == expanded


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(("kind", "name"), SERVICE_WORKLOADS)
def test_each_service_connects_to_nats_as_its_own_user_with_only_its_own_password(
    build: str, kind: str, name: str
) -> None:
    objects = render(build)
    spec, container = _api_pod(objects, kind, name)
    env = _env_values(container)
    assert env["SLUICEWAY_NATS_USER"] == name
    password_file = env["SLUICEWAY_NATS_PASSWORD_FILE"]
    secret, key = _secret_file(spec, container, password_file)
    assert _named(secret, "sluiceway-nats-users") and key == name
    # the pod holds its own password only: the one key of the Secret that its volume projects
    users_volumes = [
        v["secret"]
        for v in spec["volumes"]
        if _named(v.get("secret", {}).get("secretName", ""), "sluiceway-nats-users")
    ]
    assert [[item["key"] for item in v.get("items", [])] for v in users_volumes] == [[name]]
    assert "sluiceway-nats-users" not in json.dumps(container.get("envFrom", []))
    assert "sluiceway-nats-users" not in json.dumps(container.get("env", []))

    ca_volumes = [
        v["secret"] for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "nats-tls"
    ]
    if build == "base":
        ca = _secret_file(spec, container, env["SLUICEWAY_NATS_CA_FILE"])
        assert ca == ("nats-tls", "ca.crt")
        # the CA only: nats-server's key never reaches a service's pod
        assert [[item["key"] for item in v.get("items", [])] for v in ca_volumes] == [["ca.crt"]]
    else:
        assert "SLUICEWAY_NATS_CA_FILE" not in env and ca_volumes == []


def test_the_base_serves_nats_clients_with_tls_from_the_nats_tls_secret() -> None:
    objects = render("base")
    files = _nats_files(objects)
    # nats.conf includes the users and TLS from its own directory: both are in the ConfigMap
    includes = re.findall(r"^include (\S+)$", files["nats.conf"], re.M)
    assert includes == ["./auth.conf", "./tls.conf"]
    assert {include.removeprefix("./") for include in includes} <= set(files)
    block = re.search(r"^tls \{\n(.*?)^\}", files["tls.conf"], re.M | re.S)
    assert block, "tls.conf has no top-level tls block"
    settings = dict(re.findall(r"^\s*(\w+): (\S+)$", block.group(1), re.M))
    assert set(settings) == {"cert_file", "key_file"}
    spec, container = _nats_pod(objects)
    assert _secret_file(spec, container, settings["cert_file"]) == ("nats-tls", "tls.crt")
    assert _secret_file(spec, container, settings["key_file"]) == ("nats-tls", "tls.key")
    (volume,) = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "nats-tls"]
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the key is not for every user"
    # the cluster routes stay as they were (a comment says so): no tls block in the cluster's
    cluster = re.search(r"^cluster \{\n(.*?)^\}", files["nats.conf"], re.M | re.S)
    assert cluster and "plaintext" in cluster.group(1)
    settings_of_cluster = [line.split("#")[0] for line in cluster.group(1).splitlines()]
    assert not [line for line in settings_of_cluster if re.match(r"\s*tls\b", line)]


def test_the_dev_overlay_keeps_the_nats_users_but_not_tls() -> None:
    base, dev = _nats_files(render("base")), _nats_files(render("dev"))
    assert dev["nats.conf"] == base["nats.conf"] and dev["auth.conf"] == base["auth.conf"]
    assert [line for line in dev["tls.conf"].splitlines() if not line.startswith("#")] == []
    assert "nats-tls" not in json.dumps(render("dev"))


def test_the_dev_nats_passwords_are_published_and_dev_only() -> None:
    secret = find(render("dev"), "Secret", "sluiceway-nats-users")
    passwords = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert passwords == {s: f"{s}-dev-only-not-a-secret" for s in deploy.SERVICES}
    # published where a developer looks, as a pattern: one per service
    for path in (
        deploy.BUILDS["dev"] / "kustomization.yaml",
        deploy.K8S / "README.md",
        deploy.TILTFILE,
    ):
        assert "<service>-dev-only-not-a-secret" in path.read_text(), path


@pytest.mark.parametrize("build", BUILDS)
def test_the_nats_probes_keda_and_the_prestop_hook_need_neither_tls_nor_a_user(
    build: str,
) -> None:
    """The monitoring port stays plain HTTP without a credential (NATS users and TLS are the
    client port's), and lame duck mode is signalled through the pid file."""
    objects = render(build)
    conf = _nats_files(objects)["nats.conf"]
    _, container = _nats_pod(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert re.findall(r"^(https?): 0\.0\.0\.0:(\d+)$", conf, re.M) == [
        ("http", str(ports["monitor"]))
    ]
    for probe in PROBES:
        get = container[probe]["httpGet"]
        assert get["port"] == "monitor" and get.get("scheme", "HTTP") == "HTTP", probe
        assert "httpHeaders" not in get, probe
    if build == "base":
        for trigger in find(objects, "ScaledObject", "worker")["spec"]["triggers"]:
            assert trigger["metadata"]["useHttps"] == "false"

    pid_file = re.search(r"^pid_file: (\S+)$", conf, re.M)
    assert pid_file
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["nats-server", "--signal", f"ldm={pid_file.group(1)}"]
    (mount,) = [
        m for m in container["volumeMounts"] if pid_file.group(1).startswith(m["mountPath"] + "/")
    ]
    assert not mount.get("readOnly"), "nats-server writes its pid file there"


async def test_nats_server_admits_each_service_as_its_user_over_tls_and_no_one_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base's users and TLS on a real nats-server (without the pod's listen, cluster and
    store settings), with passwords made as the README says: the server asks every client for
    TLS and a user; each service connects as its manifest configures it (its user, its password
    file, the CA); another's password, an unknown user and a client of another CA do not."""
    objects = render("base")
    ca = trustme.CA()
    _write_nats_config(objects, tmp_path, ca)
    (tmp_path / "local.conf").write_text("include ./auth.conf\ninclude ./tls.conf\n")
    env = _nats_environment("base", objects)
    for variable, password in env.items():
        monkeypatch.setenv(variable, password)
    ca_file = certs.write_ca(ca, tmp_path / "ca.crt")
    server = LocalNats(store_dir=tmp_path / "store", config_file=tmp_path / "local.conf")
    server.start()

    async def connects(auth: natsauth.NatsAuth) -> bool:
        try:
            client = await nats.connect(
                server.url,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
                **auth.options(),
            )
        except Exception:  # refused: the server's answer, a failed handshake, a timeout
            return False
        await client.close()
        return True

    try:
        with socket.create_connection((server.host, server.port), timeout=2) as s:
            info = json.loads(s.recv(4096).decode().removeprefix("INFO ").strip())
        assert info["tls_required"] is True and info["auth_required"] is True

        files = {}
        for kind, name in SERVICE_WORKLOADS:
            env_of = _env_values(_api_pod(objects, kind, name)[1])
            user = env_of["SLUICEWAY_NATS_USER"]
            files[user] = tmp_path / f"{user}.password"
            files[user].write_text(env[deploy.nats_password_variable(user)] + "\n")
            assert await connects(natsauth.NatsAuth(user, str(files[user]), str(ca_file))), user
        assert set(files) == set(deploy.SERVICES)

        other_ca = certs.write_ca(trustme.CA(), tmp_path / "other-ca.crt")
        assert not await connects(natsauth.NatsAuth("worker", str(files["planner"]), str(ca_file)))
        assert not await connects(natsauth.NatsAuth("worker", str(files["worker"]), str(other_ca)))
        assert not await connects(natsauth.NatsAuth("nobody", str(files["worker"]), str(ca_file)))
    finally:
        server.kill()


def test_the_secrets_the_base_needs_are_documented_with_how_to_make_them() -> None:
    kustomization = (deploy.BUILDS["base"] / "kustomization.yaml").read_text()
    header = " ".join(
        line.lstrip("# ") for line in kustomization.splitlines() if line.startswith("#")
    )
    readme = (deploy.K8S / "README.md").read_text()
    flat_readme = " ".join(readme.replace("\\\n", " ").split())
    for name in deploy.EXTERNAL_SECRETS:
        assert name in header and name in readme, name
    make_principals = (
        "kubectl -n sluiceway create secret generic sluiceway-principals"
        " --from-file=principals.yaml"
    )
    assert make_principals in " ".join(header.split())
    assert make_principals in flat_readme
    assert "kubectl -n sluiceway create secret tls sluiceway-api-tls" in " ".join(header.split())

    # the NATS passwords: random, one per user, as nats-server reads them from its environment
    # (test_nats_server_admits_each_service_as_its_user_over_tls_and_no_one_else)
    make_users = "kubectl -n sluiceway create secret generic sluiceway-nats-users"
    assert make_users in flat_readme
    for service in deploy.SERVICES:
        assert f"--from-literal={service}=$(openssl rand -base64 24)" in flat_readme, service
    assert "kubectl -n sluiceway create secret generic nats-tls --type=kubernetes.io/tls" in (
        flat_readme
    )

    # the README's cert-manager Certificates write the Secrets the APIs and nats-server mount,
    # for the names they are reached by
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    certificates = {
        doc["spec"]["secretName"]: doc
        for doc in map(yaml.safe_load, blocks)
        if doc and doc.get("kind") == "Certificate"
    }
    assert set(certificates) == {"sluiceway-api-tls", "nats-tls"}
    for certificate in certificates.values():
        assert certificate["apiVersion"] == "cert-manager.io/v1"
        assert certificate["metadata"]["namespace"] == "sluiceway"
        assert "server auth" in certificate["spec"]["usages"]
    objects = render("base")
    config = find(objects, "ConfigMap", "sluiceway-config")["data"]
    nats_hosts = {
        url.split("://")[1].rsplit(":", 1)[0] for url in config["SLUICEWAY_NATS_URL"].split(",")
    }
    assert len(nats_hosts) == 3
    assert nats_hosts <= set(certificates["nats-tls"]["spec"]["dnsNames"])
    spec = certificates["sluiceway-api-tls"]["spec"]
    certificate = certificates["sluiceway-api-tls"]
    for _, name in API_WORKLOADS:
        service = find(objects, "Service", name)
        namespace = service["metadata"]["namespace"]
        assert certificate["metadata"]["namespace"] == namespace
        assert {name, f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"} <= set(
            spec["dnsNames"]
        )
