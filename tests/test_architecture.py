"""The structure issue 12 set, kept: small modules, no cycles, one-way layers, no globals.

`bench/architecture.py` prints the same figures; these tests fail when a change breaks one.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _figures() -> dict[str, object]:
    spec = importlib.util.spec_from_file_location("architecture", ROOT / "bench" / "architecture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("architecture", module)
    spec.loader.exec_module(module)
    figures: dict[str, object] = module.measure()
    return figures


FIGURES = _figures()


def test_every_module_is_at_most_500_lines() -> None:
    assert FIGURES["modules_over_target"] == []


def test_no_import_cycles() -> None:
    assert FIGURES["import_cycles"] == []


def test_gateway_imports_nothing_from_the_admin_side() -> None:
    assert FIGURES["gateway_to_admin_imports"] == []


def test_no_global_statements() -> None:
    assert FIGURES["global_statements"] == []


def test_no_mutable_module_state() -> None:
    """Memos, sinks and registries belong to objects the runtime owns, not to modules."""
    assert FIGURES["module_state"] == []


def test_tests_import_helpers_not_other_tests() -> None:
    """What tests share lives in tests/helpers/; fixtures live in conftest.py and are never
    imported: no test module imports another test module or conftest."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                last = name.split(".")[-1] if name.startswith("tests.") else ""
                if last == "conftest" or last.startswith("test_"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert offenders == []


def test_bench_scripts_import_names_that_exist() -> None:
    """bench/ is not run by the suite; a moved name must not leave it broken."""
    import importlib

    missing = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Try):  # an import kept for older trees, with its fallback
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokenward"):
                if any(isinstance(parent, ast.Try) and node in ast.walk(parent) for parent in ast.walk(tree)):
                    continue
                module = importlib.import_module(node.module)
                missing += [
                    f"{path.name}:{node.lineno} {node.module}.{alias.name}"
                    for alias in node.names
                    if not hasattr(module, alias.name)
                    and importlib.util.find_spec(f"{node.module}.{alias.name}") is None
                ]
    assert missing == []


def test_the_readme_module_map_names_every_module() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Module map") : readme.index("### One request's walk")]
    named = set(re.findall(r"`(\w+)`", table))
    modules = {p.stem for folder in ("gateway", "admin") for p in (ROOT / folder).glob("*.py")}
    assert sorted(modules - named - {"__init__", "__main__"}) == []
