"""One import name (issue 12, item 1): everything installs under `tokenward`.

admin/ is the package `tokenward`, gateway/ its subpackage `tokenward.gateway`. The wheel has no
other top-level name, so another distribution's `gateway/app.py` cannot replace ours; the
command line runs as `tokenward` and as `python -m tokenward`; no file in the repository still
imports (or names, in a `-c` string or a monkeypatch target) the old `gateway`/`admin` modules.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.gateway import ROOT

PACKAGES = {"admin": "tokenward", "gateway": "tokenward/gateway"}


def _sources() -> dict[str, Path]:
    """Wheel path -> source file, for every module of the two folders."""
    found = {}
    for folder, target in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            found[f"{target}/{path.name}"] = path
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """A wheel built from a copy of what the Dockerfile copies (not the working tree, so the
    build leaves nothing behind in it)."""
    tree = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(tree)],
        check=True,
        timeout=600,
    )
    (path,) = out.glob("tokenward-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_one_top_level_name(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["tokenward"]
    outside = [n for n in names if not n.startswith(("tokenward/", "tokenward-"))]
    assert outside == []
    dist_info = {n.split("/", 1)[0] for n in names if n.startswith("tokenward-")}
    assert all(d.endswith(".dist-info") for d in dist_info), dist_info


def test_every_module_is_in_the_wheel_under_its_new_name(wheel: zipfile.ZipFile) -> None:
    in_wheel = {n for n in wheel.namelist() if n.endswith(".py")}
    assert in_wheel == set(_sources())
    assert "tokenward/py.typed" in wheel.namelist()  # mypy reads the installed package's types
    for name, source in _sources().items():
        assert wheel.read(name) == source.read_bytes(), name


def test_the_console_script_points_into_the_package(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert re.search(r"^tokenward\s*=\s*tokenward\.cli:main$", text, re.M), text


def _run(*argv: str, cwd: Path, env_path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if env_path is not None:
        env["PYTHONPATH"] = env_path
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_version_from_python_m_and_from_the_script(tmp_path: Path) -> None:
    """Run outside the repository (cwd elsewhere), so what runs is what is installed."""
    version = importlib.metadata.version("tokenward")
    by_module = _run(sys.executable, "-m", "tokenward", "--version", cwd=tmp_path)
    assert by_module.returncode == 0, by_module.stderr
    assert by_module.stdout.strip() == f"tokenward {version}"
    script = Path(sys.executable).parent / "tokenward"
    by_script = _run(str(script), "--version", cwd=tmp_path)
    assert by_script.returncode == 0, by_script.stderr
    assert by_script.stdout.strip() == f"tokenward {version}"
    usage = _run(sys.executable, "-m", "tokenward", cwd=tmp_path)  # no subcommand: one error line
    assert usage.returncode == 2 and "tokenward: error:" in usage.stderr and "tokenward --help" in usage.stderr


def test_old_top_level_names_are_not_installed(tmp_path: Path) -> None:
    """An old venv's editable install (top-level `gateway` and `admin`) is gone after ./dev's
    reinstall: from outside the repository neither name imports."""
    probe = "import importlib.util as u; print(u.find_spec('gateway'), u.find_spec('admin'))"
    done = _run(sys.executable, "-c", probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "None"]


def test_another_packages_gateway_does_not_replace_ours(tmp_path: Path) -> None:
    """The bug class: a distribution shipping `gateway/app.py` (or `admin/api.py`) earlier on
    sys.path used to replace our modules; under `tokenward` it cannot."""
    for folder, module in (("gateway", "app"), ("admin", "api")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
        (tmp_path / folder / f"{module}.py").write_text("raise SystemExit('the other package ran')\n")
    probe = (
        "import tokenward.gateway.app, tokenward.api, tokenward.cli\n"
        "print(tokenward.gateway.app.__name__, hasattr(tokenward.gateway.app, 'create_proxy_server'))\n"
    )
    done = _run(sys.executable, "-c", probe, cwd=tmp_path, env_path=str(tmp_path))
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.split() == ["tokenward.gateway.app", "True"]


# -- no old import name left in the repository -------------------------------------------------
OLD_ROOTS = set(PACKAGES)
_MODULES = "|".join(sorted({p.stem for p in _sources().values()} - {"__init__", "__main__"}, key=len, reverse=True))
_OLD_IN_TEXT = re.compile(
    rf"(?<![\w.\-/])(?:from\s+(?:gateway|admin)(?:\.\w+)*\s+import\b|(?<![\w ])import\s+(?:gateway|admin)\b"
    rf"|(?:gateway|admin)\.(?:{_MODULES})\b(?![\w/-])|-m\s+admin\.cli\b)"
)


def _python_files() -> list[Path]:
    files = []
    for folder in ("admin", "gateway", "tests", "bench"):
        files += [p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files)


def _old_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in OLD_ROOTS]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in OLD_ROOTS:
                found.append(f"{node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [f"{node.lineno}: {m.group(0)!r} in a string" for m in _OLD_IN_TEXT.finditer(node.value)]
    return found


def test_no_python_file_uses_the_old_import_names() -> None:
    """Imports, `python -c` strings, `-m` arguments and monkeypatch targets all say `tokenward`
    (fix a file with /work/wt/rename-imports.sh or by hand: gateway.X -> tokenward.gateway.X,
    admin.X -> tokenward.X)."""
    old = {str(p.relative_to(ROOT)): _old_names(p) for p in _python_files()}
    assert {name: lines for name, lines in old.items() if lines} == {}


def test_no_doc_or_deploy_file_uses_the_old_import_names() -> None:
    files = [ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "bench" / "README.md", ROOT / "dev"]
    files += sorted(p for p in (ROOT / "deploy").rglob("*") if p.is_file())
    old = {}
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        hits = [f"{n}: {line.strip()}" for n, line in enumerate(lines, 1) if _OLD_IN_TEXT.search(line)]
        if hits:
            old[str(path.relative_to(ROOT))] = hits
    assert old == {}
