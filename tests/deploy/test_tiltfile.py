"""The Tiltfile, evaluated by a real Starlark interpreter with Tilt's builtins recorded: every
service has an image built from exactly the folders it imports, and a resource."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import starlark

from tests.support import deploy
from tests.support.deploy import SERVICES, evaluate_tiltfile, render


def imported_packages(folder: Path) -> set[str]:
    """The sluiceway subpackages the Python files under `folder` import."""
    found = set()
    for path in folder.rglob("*.py"):
        found |= set(re.findall(r"^\s*(?:from|import) sluiceway\.(\w+)", path.read_text(), re.M))
    return found


def closure(service: str) -> set[str]:
    """The folders a service needs: its own, then what each imported package imports."""
    folder_of = {
        "common": "libs/common/src/sluiceway/common",
        "v1": "libs/proto/src/sluiceway/v1",
        **{s: f"services/{s}/src/sluiceway/{s}" for s in SERVICES},
    }
    needed = {service}
    todo = [service]
    while todo:
        package = todo.pop()
        for imported in imported_packages(deploy.ROOT / folder_of[package]):
            if imported not in needed:
                needed.add(imported)
                todo.append(imported)
    return {folder_of[p] for p in needed}


def test_the_tiltfile_builds_one_image_per_service() -> None:
    calls = evaluate_tiltfile()
    assert sorted(image["ref"] for image in calls.images) == sorted(
        f"sluiceway/{s}" for s in SERVICES
    )
    assert calls.yaml == [{"kustomize": "deploy/k8s/overlays/dev"}]
    # one function looped over the services, not a block per service
    source = deploy.TILTFILE.read_text()
    assert len(re.findall(r"\bdocker_build\w*\(", source)) == 1
    assert len(re.findall(r"^for \w+", source, re.M)) == 1


@pytest.mark.parametrize("service", SERVICES)
def test_each_image_lists_exactly_the_folders_its_service_imports(service: str) -> None:
    (image,) = [i for i in evaluate_tiltfile().images if i["ref"] == f"sluiceway/{service}"]
    folders = set(image["only"]) - {"pyproject.toml", "README.md"}
    assert folders == closure(service)
    assert image["target"] == service
    assert image["build_args"]["SERVICE"] == service
    assert image["dockerfile"] == "deploy/docker/Dockerfile"
    df = deploy.parse_dockerfile(deploy.DOCKERFILE.read_text())
    assert image["entrypoint"] == deploy.exec_form(str(df.last(service, "ENTRYPOINT")))


@pytest.mark.parametrize("service", SERVICES)
def test_live_update_syncs_each_folder_onto_its_installed_copy(service: str) -> None:
    (image,) = [i for i in evaluate_tiltfile().images if i["ref"] == f"sluiceway/{service}"]
    df = deploy.parse_dockerfile(deploy.DOCKERFILE.read_text())
    venv = re.search(r"VIRTUAL_ENV=(\S+)", " ".join(df.stages["runtime"].all("ENV")))
    assert venv
    site = f"{venv.group(1)}/lib/python3.11/site-packages/sluiceway"
    syncs = [step["sync"] for step in image["live_update"] if "sync" in step]
    assert {local for local, _ in syncs} == set(image["only"]) - {"pyproject.toml", "README.md"}
    for local, remote in syncs:
        assert (deploy.ROOT / local / "__init__.py").exists(), local
        assert remote == f"{site}/{Path(local).name}"
    assert image["build_args"]["LIVE_UPDATE"] == "1"


def test_every_workload_of_the_dev_overlay_is_a_resource_and_every_image_is_built() -> None:
    calls = evaluate_tiltfile()
    dev = render("dev")
    names = {w["metadata"]["name"] for w in deploy.workloads(dev)}
    resources = {r["workload"] for r in calls.resources}
    assert resources == names
    built = {i["ref"] for i in calls.images}
    used = {
        c["image"].split(":", 1)[0]
        for _, spec in deploy.pod_specs(dev)
        for c in spec["containers"]
        if deploy.is_sluiceway(c)
    }
    assert used == built


def test_the_grpc_apis_are_forwarded_to_their_container_ports() -> None:
    calls = evaluate_tiltfile()
    dev = render("dev")
    forwards = {
        r["workload"]: [f["port_forward"] for f in r.get("port_forwards", [])]
        for r in calls.resources
    }
    config = deploy.find(dev, "ConfigMap", "sluiceway-config")["data"]
    for name, kind, port_name, setting in (
        ("planner", "Deployment", "grpc-control", "SLUICEWAY_CONTROL_ADDR"),
        ("tracker", "StatefulSet", "grpc-tracker", "SLUICEWAY_TRACKER_ADDR"),
    ):
        container = deploy.find(dev, kind, name)["spec"]["template"]["spec"]["containers"][0]
        grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}[port_name]
        # the API, which the service serves on its address; not the probes' health-only port
        assert grpc_port == deploy.port_of(config[setting])
        assert container["readinessProbe"]["grpc"]["port"] != grpc_port
        assert forwards[name] == [[grpc_port, grpc_port]]


def test_a_tiltfile_calling_an_unknown_builtin_fails_to_evaluate() -> None:
    """The control: the evaluation is not lenient."""
    broken = deploy.TILTFILE.read_text().replace("port_forward(", "port_forwad(", 1)
    with pytest.raises(starlark.StarlarkError):
        evaluate_tiltfile(broken)
