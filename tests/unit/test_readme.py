"""The README as a newcomer reads it: its first screen fits 60 lines and holds what Sluiceway
is, the two commands, the diagram and the five-line example; every command in its code blocks
is run or parsed (a `sluiceway` command by the CLI's own parser, a `make` target by make's dry
run, a `kubectl create` by kubectl's client-side dry run, a path, an image target or a
kustomization by looking), and every code block of another language parses."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
import yaml

from sluiceway.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)]
BIN = Path(sys.executable).parent
DOCKERFILE = (ROOT / "deploy/docker/Dockerfile").read_text()


def _commands() -> list[list[str]]:
    """Every simple command of the shell blocks: comments dropped, `&&`, `\\` continuations
    and `for v in ...; do ... done` expanded (one command per value)."""
    out: list[list[str]] = []
    for lang, body in BLOCKS:
        if lang not in ("", "sh", "bash", "shell"):
            continue
        text = body.replace("\\\n", " ")
        loop: tuple[str, list[str]] | None = None
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if words[0] == "for":  # for v in a b c; do
                var, values = words[1], [w.rstrip(";") for w in words[3:] if w != "do"]
                loop = (var, [v for v in values if v])
                continue
            if words[0] == "done":
                loop = None
                continue
            for values in [loop[1]] if loop else [[""]]:
                for value in values:
                    expanded = [w.replace(f"${loop[0]}", value) if loop else w for w in words]
                    joined = " ".join(shlex.quote(w) for w in expanded)
                    out += [shlex.split(part) for part in joined.split(" '&&' ")]
    return out


COMMANDS = _commands()


def test_the_first_screen_says_what_it_is_and_how_to_start() -> None:
    first = "\n".join(README.splitlines()[:60])
    assert first.startswith("# Sluiceway\n")
    assert "```mermaid" in first and "flowchart" in first
    assert "make demo" in first and "make test" in first
    five = next(body for _, body in BLOCKS if "sluiceway init" in body)
    assert five in first and len(five.strip().splitlines()) == 5
    # then the sections a newcomer looks for, in this order
    heads = [h for h in re.findall(r"^## (.+)$", README, re.M)]
    order = ["Use it", "Run it on Kubernetes", "Observe it", "Links"]
    assert [h for h in heads if h in order] == order


def test_the_diagram_is_well_formed_mermaid() -> None:
    """Every line is an edge (`a -- "label" --> b`) or a stored node (`a[("label")]`), in a
    subgraph or not; quotes balance."""
    body = next(b for lang, b in BLOCKS if lang == "mermaid")
    lines = [ln.strip() for ln in body.splitlines()]
    assert lines[0] == "flowchart LR"
    for ln in lines[1:]:
        if ln in ("end",) or ln.startswith("subgraph "):
            continue
        assert ln.count('"') % 2 == 0, ln
        assert re.fullmatch(
            r"[\w\[\]\(\)\" :,/.-]+?( -- \"[^\"]+\" -->| -->) [\w\[\]\(\)\" :,/.-]+", ln
        ) or (re.fullmatch(r"\w+\[\(\"[^\"]+\"\)\]", ln)), ln


def test_every_command_is_of_a_known_kind() -> None:
    kinds = {"make", "sluiceway", "export", "docker", "kubectl"}
    assert COMMANDS and {c[0] for c in COMMANDS} <= kinds, {c[0] for c in COMMANDS} - kinds


@pytest.mark.parametrize(
    "words", [c for c in COMMANDS if c[0] == "sluiceway"], ids=lambda c: " ".join(c[:3])
)
def test_each_sluiceway_command_parses(words: list[str]) -> None:
    args = [w.strip("[]") for w in words[1:]]  # `[--json]`: the optional flag, given
    parsed = cli.build_parser().parse_args(args)
    assert parsed.command == args[0]


@pytest.mark.parametrize("words", [c for c in COMMANDS if c[0] == "make"], ids=" ".join)
def test_each_make_target_exists(words: list[str]) -> None:
    targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
    assert words[1] in targets
    dry = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr


@pytest.mark.parametrize("words", [c for c in COMMANDS if c[0] == "docker"], ids=" ".join)
def test_each_image_build_names_a_dockerfile_target(words: list[str]) -> None:
    assert words[1] == "build"
    assert (ROOT / words[words.index("-f") + 1]).is_file()
    target = words[words.index("--target") + 1]
    assert re.search(rf"^FROM \S+ AS {re.escape(target)}$", DOCKERFILE, re.M), target


def _files_named_by(words: list[str], where: Path) -> None:
    """The files a `kubectl create secret` reads (a real certificate and key for `tls`)."""
    leaf = trustme.CA().issue_cert("planner.sluiceway.svc")
    for word in words:
        flag, _, name = word.partition("=")
        if flag == "--cert":
            (where / name).write_bytes(leaf.cert_chain_pems[0].bytes())
        elif flag == "--key":
            (where / name).write_bytes(leaf.private_key_pem.bytes())
        elif flag == "--from-file":
            (where / name.split("=")[-1]).write_text("principals: []\n")


@pytest.mark.parametrize("words", [c for c in COMMANDS if c[0] == "kubectl"], ids=" ".join)
def test_each_kubectl_command_is_accepted(words: list[str], tmp_path: Path) -> None:
    kubectl = str(BIN / "kubectl")
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "none")}  # never a real cluster
    if "apply" in words:  # `apply -k DIR`: the kustomization builds (offline)
        directory = words[words.index("-k") + 1]
        out = subprocess.run([kubectl, "kustomize", str(ROOT / directory)], capture_output=True)
    else:  # `create ...`: kubectl's own parser and object builder, client side only
        _files_named_by(words, tmp_path)
        out = subprocess.run(
            [kubectl, *words[1:], "--dry-run=client", "-o", "name"],
            capture_output=True,
            env=env,
            cwd=tmp_path,
        )
    assert out.returncode == 0, out.stderr.decode()


def test_every_other_block_parses() -> None:
    for lang, body in BLOCKS:
        if lang == "python":
            ast.parse(body)
        elif lang == "yaml":
            assert isinstance(yaml.safe_load(body), dict)
        else:
            assert lang in ("", "mermaid"), lang


def test_the_docs_it_links_exist() -> None:
    for path in re.findall(r"`((?:docs|examples|deploy)/[\w./-]+)`", README):
        assert (ROOT / path).exists(), path
