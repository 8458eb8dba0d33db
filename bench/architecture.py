"""Structure figures for issue 12: module sizes, import cycles, layer breaches, globals.

    .venv/bin/python bench/architecture.py          # the figures, one per line
    .venv/bin/python bench/architecture.py --json   # the same as JSON

Reads the source as text (ast), imports nothing. Every `import` counts, also one inside a
function or under `if TYPE_CHECKING:`: a deferred import is still a dependency, and hiding
a cycle behind one is what this is here to show.

- modules: `admin/` is the package `tokenward`, `gateway/` is `tokenward.gateway`.
- cycles: strongly connected groups of modules in the import graph (0 is the target).
- gateway -> admin: imports from `tokenward.gateway.*` of a module outside it (0).
- globals: `global` statements in the package (0).
- module state: module-level names bound to a mutable container (a dict, list, set, deque,
  bounded map...) that are not constants by name (UPPER_CASE) (0): a memo or a sink at module
  level is shared by every server in the process, so it belongs to an object the runtime owns.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"admin": "tokenward", "gateway": "tokenward.gateway"}
TARGET_LINES = 500


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, dotted in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = dotted if path.stem == "__init__" else f"{dotted}.{path.stem}"
            found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports, by any route."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in known:
                out.add(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


MUTABLE_CALLS = {"dict", "list", "set", "OrderedDict", "BoundedMap", "deque", "defaultdict", "Counter"}
MUTABLE_NODES = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)


def module_state(path: Path) -> list[str]:
    """`path:line name` for each module-level binding of a mutable container to a name that is
    not a constant's (UPPER_CASE, optionally with a leading underscore) or `__all__`."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        call = isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in MUTABLE_CALLS
        if not (isinstance(value, MUTABLE_NODES) or call):
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id != "__all__" and not target.id.lstrip("_").isupper():
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {target.id}")
    return found


def measure() -> dict[str, object]:
    found = modules()
    known = set(found)
    graph = {name: imports_of(path, known) - {name} for name, path in found.items()}
    sizes = {name: len(path.read_text().splitlines()) for name, path in found.items()}
    breaches = sorted(
        f"{name} -> {dep}"
        for name, deps in graph.items()
        if name.startswith("tokenward.gateway")
        for dep in deps
        if not dep.startswith("tokenward.gateway")
    )
    global_lines = sorted(
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in found.values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Global)
    )
    largest = max(sizes, key=lambda name: sizes[name])
    return {
        "largest_module": largest,
        "largest_module_lines": sizes[largest],
        "modules_over_target": sorted(
            (f"{name} ({lines})" for name, lines in sizes.items() if lines > TARGET_LINES)
        ),
        "import_cycles": cycles(graph),
        "gateway_to_admin_imports": breaches,
        "global_statements": global_lines,
        "module_state": sorted(item for path in found.values() for item in module_state(path)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = measure()
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"largest module: {figures['largest_module']} ({figures['largest_module_lines']} lines, target {TARGET_LINES})")
    for key in ("modules_over_target", "import_cycles", "gateway_to_admin_imports", "global_statements", "module_state"):
        items = figures[key]
        assert isinstance(items, list)
        print(f"{key.replace('_', ' ')}: {len(items)}")
        for item in items:
            print(f"  {' <-> '.join(item) if isinstance(item, list) else item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
