"""What the deployment files say, read with real tools: kubectl's kustomize, the Dockerfile, the
Tiltfile evaluated by a Starlark interpreter, and the names the code reads from its environment."""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
TILTFILE = ROOT / "Tiltfile"
BUILDS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev"}
SERVICES = ("planner", "worker", "committer", "tracker")
# the Kubernetes versions the manifests must be valid for: the oldest with native gRPC probes
# generally available that is still common, and the newest whose schemas are shipped
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
# Secrets that a deployment of the base makes outside of git (README "Run it on Kubernetes",
# deploy/k8s/README.md): the sources, the object store, the APIs' principals and certificate,
# the services' NATS passwords, and nats-server's certificate
EXTERNAL_SECRETS = {
    "sluiceway-source",
    "sluiceway-s3",
    "sluiceway-principals",
    "sluiceway-api-tls",
    "sluiceway-nats-users",
    "nats-tls",
}
# the NATS users of the base: the file that nats.conf includes, generated from the code
NATS_AUTH_CONF = BUILDS["base"] / "auth.conf"
NATS_AUTH_REGENERATE = (
    ".venv/bin/python -c 'from tests.support import deploy; deploy.write_nats_auth_conf()'"
)
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}


def tool(name: str) -> str:
    """A binary installed into the virtualenv by a pinned dev dependency."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: `make install` installs it (pyproject dev extra)")
    return str(path)


@functools.cache
def render(build: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize` of one kustomization: the objects it would apply."""
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(BUILDS[build])],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def resource_files() -> list[Path]:
    """The files the kustomizations list as whole resources (not patches, not generator inputs)."""
    files = []
    for kfile in kustomizations():
        for entry in yaml.safe_load(kfile.read_text()).get("resources", []):
            path = (kfile.parent / entry).resolve()
            if path.is_file():
                files.append(path)
    return sorted(set(files))


def load_file(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    """One object by kind and name; a generated ConfigMap or Secret also by its unhashed name."""
    for obj in objects:
        meta_name = obj["metadata"]["name"]
        if obj["kind"] == kind and (
            meta_name == name or re.fullmatch(rf"{name}-[a-z0-9]{{10}}", meta_name)
        ):
            return obj
    raise LookupError(f"no {kind} {name!r}")


def workloads(objects: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] in WORKLOAD_KINDS]


def pod_specs(
    objects: tuple[dict[str, Any], ...],
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) of every workload."""
    for obj in workloads(objects):
        yield obj, obj["spec"]["template"]["spec"]


def is_sluiceway(container: dict[str, Any]) -> bool:
    return str(container["image"]).startswith("sluiceway/")


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ---- the names the code reads from its environment ------------------------------------------


def _string_constants(path: Path) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


@functools.cache
def names_read_by_the_code() -> frozenset[str]:
    """Every SLUICEWAY_* and AWS_* name written as a string constant in the services' and the
    shared libraries' source (settings, telemetry, destination, crash, ...)."""
    sources = [*ROOT.glob("libs/common/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py")]
    names: set[str] = set()
    for path in sources:
        for constant in _string_constants(path):
            names.update(re.findall(r"\b(?:SLUICEWAY|AWS)_[A-Z0-9_]+\b", constant))
    return frozenset(names)


@functools.cache
def otel_names() -> frozenset[str]:
    """The OTEL_* variables the OpenTelemetry SDK defines."""
    from opentelemetry.sdk import environment_variables

    return frozenset(name for name in dir(environment_variables) if name.startswith("OTEL_"))


@functools.cache
def url_env_names() -> frozenset[str]:
    """The url_env names of the example configs: the keys a source Secret provides."""
    names = set()
    for path in (ROOT / "examples").glob("*.yaml"):
        for source in (yaml.safe_load(path.read_text()).get("sources") or {}).values():
            if isinstance(source, dict) and source.get("url_env"):
                names.add(source["url_env"])
    return frozenset(names)


# ---- the NATS users ------------------------------------------------------------------------------


def nats_password_variable(service: str) -> str:
    """The variable of nats-server's environment that holds `service`'s password."""
    return f"{service.upper()}_NATS_PASSWORD"


def base_settings() -> dict[str, str]:
    """base/sluiceway.env: the services' settings (the sluiceway-config ConfigMap)."""
    lines = (BUILDS["base"] / "sluiceway.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def nats_auth_conf() -> str:
    """What base/auth.conf must hold: natsauth.authorization_block for the base's namespace, each
    password the unquoted $<SERVICE>_NATS_PASSWORD that nats-server expands from its environment,
    below a header that says how to regenerate the file."""
    from sluiceway.common import natsauth
    from sluiceway.common.bus import Names

    names = Names(base_settings()["SLUICEWAY_NAMESPACE"])
    passwords = {s: f"${nats_password_variable(s)}" for s in natsauth.SERVICES}
    header = (
        "# GENERATED from sluiceway.common.natsauth.authorization_block: do not edit. Regenerate\n"
        "# (from the repository's root, after a change of the permissions) with\n"
        f"#   {NATS_AUTH_REGENERATE}\n"
        '# One user per service, allowed only its subjects (docs/security.md, "NATS"). Each\n'
        "# password is a variable nats-server expands from its environment (the Secret\n"
        "# sluiceway-nats-users, nats.yaml): this file holds no secret.\n"
    )
    return header + natsauth.authorization_block(names, passwords)


def write_nats_auth_conf() -> None:
    NATS_AUTH_CONF.write_text(nats_auth_conf())


# ---- the Dockerfile ---------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def chain(self, name: str) -> list[Stage]:
        """A stage and the stages it is built FROM, nearest first."""
        out = [self.stages[name]]
        while out[-1].base in self.stages:
            out.append(self.stages[out[-1].base])
        return out

    def last(self, name: str, keyword: str) -> str | None:
        for stage in self.chain(name):
            found = stage.all(keyword)
            if found:
                return found[-1]
        return None


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions per stage (line continuations joined, comments dropped). Only what the checks
    need: the stages, their bases, their instructions, the global ARG defaults."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            image = words[0]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            current = Stage(name=name, base=image)
            stages[name] = current
        elif current is None:
            if keyword == "ARG":
                key, _, default = args.partition("=")
                global_args[key] = default
        else:
            current.instructions.append((keyword, args))
    return Dockerfile(global_args, stages)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec form: {args}"
    return [str(v) for v in value]


# ---- the Tiltfile, evaluated --------------------------------------------------------------------


@dataclass
class TiltCalls:
    images: list[dict[str, Any]] = field(default_factory=list)
    yaml: list[Any] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)


def evaluate_tiltfile(source: str | None = None) -> TiltCalls:
    """Run the Tiltfile in starlark-rust (the dialect Tilt accepts: top-level statements, load)
    with Tilt's builtins replaced by recorders. An unknown builtin, a wrong call or a syntax
    error fails here as it would in Tilt."""
    import starlark as sl

    calls = TiltCalls()

    def build(ref: str, context: str, **kwargs: Any) -> None:
        calls.images.append({"ref": ref, "context": context, **kwargs})

    def k8s_resource(workload: str, **kwargs: Any) -> None:
        calls.resources.append({"workload": workload, **kwargs})

    def k8s_yaml(value: Any) -> None:
        calls.yaml.append(value)

    def kustomize(path: str) -> dict[str, str]:
        return {"kustomize": path}

    def sync(local: str, remote: str) -> dict[str, Any]:
        return {"sync": [local, remote]}

    def fall_back_on(files: list[str]) -> dict[str, Any]:
        return {"fall_back_on": list(files)}

    def port_forward(local: int, container: int, name: str = "") -> dict[str, Any]:
        return {"port_forward": [local, container], "name": name}

    def extension(module: str) -> Any:
        calls.loads.append(module)
        if module != "ext://restart_process":
            raise ValueError(f"unknown extension {module}")
        ext = sl.Module()
        ext.add_callable("docker_build_with_restart", build)
        return ext.freeze()

    dialect = sl.Dialect.standard()
    dialect.enable_top_level_stmt = True
    dialect.enable_load = True
    dialect.enable_lambda = True
    dialect.enable_def = True
    module = sl.Module()
    for name, fn in {
        "k8s_yaml": k8s_yaml,
        "kustomize": kustomize,
        "k8s_resource": k8s_resource,
        "sync": sync,
        "fall_back_on": fall_back_on,
        "port_forward": port_forward,
    }.items():
        module.add_callable(name, fn)
    text = TILTFILE.read_text() if source is None else source
    tree = sl.parse("Tiltfile", text, dialect)
    sl.eval(module, tree, sl.Globals.standard(), sl.FileLoader(extension))
    return calls
