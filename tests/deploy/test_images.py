"""deploy/docker/Dockerfile, checked without a container engine: hadolint, and what each service
target runs, as whom, from which base, exposing which ports."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

from tests.support import deploy
from tests.support.deploy import DOCKERFILE, SERVICES, find, parse_dockerfile, render


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [deploy.tool("hadolint"), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_finds_nothing() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_flag_an_unpinned_package(tmp_path: Path) -> None:
    """The control: the linter does run its rules on this Dockerfile. (It does not resolve an
    ARG in FROM, so base tags are checked by test_every_base_image_is_tagged_and_none_is_latest.)"""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        DOCKERFILE.read_text().replace(
            "FROM ${PYTHON_IMAGE} AS runtime\n",
            "FROM ${PYTHON_IMAGE} AS runtime\nRUN apt-get update && apt-get install -y curl\n",
        )
    )
    result = hadolint(bad)
    assert result.returncode != 0 and "DL3008" in result.stdout


def dockerfile() -> deploy.Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_there_is_one_target_per_service_built_on_one_runtime() -> None:
    stages = dockerfile().stages
    assert set(SERVICES) <= set(stages)
    for service in SERVICES:
        assert stages[service].base == "runtime"


@pytest.mark.parametrize("service", SERVICES)
def test_each_target_runs_its_service_as_a_fixed_non_root_user(service: str) -> None:
    df = dockerfile()
    user = df.last(service, "USER")
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"numeric non-root USER, got {user}"
    entrypoint = deploy.exec_form(str(df.last(service, "ENTRYPOINT")))
    assert entrypoint == ["python", "-m", f"sluiceway.{service}"]
    # the module the entry point runs exists in this checkout
    assert importlib.util.find_spec(f"sluiceway.{service}.__main__") is not None


def test_every_base_image_is_tagged_and_none_is_latest() -> None:
    df = dockerfile()
    for stage in df.stages.values():
        image = stage.base
        for key, default in df.global_args.items():
            image = image.replace("${" + key + "}", default)
        if image in df.stages:
            continue
        assert "$" not in image, f"unresolved base {stage.base}"
        _, _, tag = image.partition(":")
        assert tag and tag != "latest", image
        assert tag.startswith("3.11"), "the runtime matches requires-python and the virtualenv path"


def test_the_runtime_installs_only_the_builders_wheels() -> None:
    """No index, no compiler and no package manager in the image the services run from."""
    df = dockerfile()
    runtime = "\n".join(args for _, args in df.stages["runtime"].instructions)
    assert "--no-index" in runtime and "from=builder" in runtime
    for tool in ("apt-get", "apk", "gcc", "build-essential"):
        assert tool not in runtime
    builder = "\n".join(df.stages["builder"].all("RUN"))
    assert "pip wheel" in builder


@pytest.mark.parametrize("service", SERVICES)
def test_the_builder_copies_folders_that_exist(service: str) -> None:
    for args in dockerfile().stages["builder"].all("COPY"):
        sources = args.split()[:-1]
        for source in sources:
            path = deploy.ROOT / source.replace("${SERVICE}", service)
            assert path.exists(), path


@pytest.mark.parametrize("service", SERVICES)
def test_exposed_ports_are_the_container_ports(service: str) -> None:
    df = dockerfile()
    exposed = {int(p) for args in df.stages[service].all("EXPOSE") for p in args.split()}
    objects = render("base")
    containers = [
        c
        for _, spec in deploy.pod_specs(objects)
        for c in spec["containers"]
        if c["image"].startswith(f"sluiceway/{service}:")
    ]
    assert containers
    for container in containers:
        assert {p["containerPort"] for p in container["ports"]} == exposed


def test_the_image_uid_is_the_pods_uid() -> None:
    uid = int(str(dockerfile().last("worker", "USER")).split(":")[0])
    for service in SERVICES:
        kind = "StatefulSet" if service == "tracker" else "Deployment"
        pod = find(render("base"), kind, service)["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsUser"] == uid and pod["runAsGroup"] == uid


def test_the_build_context_is_limited_to_what_the_images_copy() -> None:
    lines = [
        line.strip()
        for line in (deploy.ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**", "everything is excluded first"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "README.md"} <= allowed
    copied = {
        source
        for args in dockerfile().stages["builder"].all("COPY")
        for source in args.split()[:-1]
    }
    for source in copied:
        pattern = source.replace("${SERVICE}", "*")
        assert any(
            a == pattern or a.rstrip("*").rstrip("/") == pattern.rstrip("/") for a in allowed
        ), f"{source} is copied but excluded from the build context"
