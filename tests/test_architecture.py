"""The structure issue 12 set, kept: small modules, no cycles, one-way layers, no globals.

`bench/architecture.py` prints the same figures; these tests fail when a change breaks one.
"""

from __future__ import annotations

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
