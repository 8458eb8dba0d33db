"""The shipped Grafana dashboard and Prometheus alert rules (deploy/), their PromQL
expressions, and the metric names and labels those use, to check against a real scrape."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.gateway import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "tokenward-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "tokenward-alerts.yml"

FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "ceil", "changes", "clamp_max", "clamp_min",
    "count", "count_over_time", "delta", "deriv", "floor", "histogram_quantile", "increase", "irate",
    "label_replace", "max", "max_over_time", "min", "min_over_time", "quantile", "rate", "round", "scalar",
    "sort", "sort_desc", "sum", "sum_over_time", "time", "topk", "bottomk", "vector",
})  # fmt: skip
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
IDENTIFIER = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
PROMETHEUS_OWN = frozenset({"up"})  # series Prometheus adds itself to every target
TARGET_LABELS = frozenset({"instance", "job"})  # labels Prometheus adds to every series


@dataclass
class Use:
    """What one expression uses: metric names (with the labels matched on each) and grouping labels."""

    metrics: dict[str, set[str]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def parse(expr: str) -> Use:
    use = Use()
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string values (may hold anything)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    for _, labels in GROUPING.findall(text):
        use.grouping |= {label.strip() for label in labels.split(",") if label.strip()}
    text = GROUPING.sub(" ", text)
    if text.count("(") != text.count(")") or text.count("{") != text.count("}"):
        use.problems.append(f"unbalanced brackets in {expr!r}")
    for name, matchers, call in IDENTIFIER.findall(text):
        if call:
            if name not in FUNCTIONS:
                use.problems.append(f"unknown function {name}() in {expr!r}")
            continue
        if name in KEYWORDS:
            continue
        use.metrics.setdefault(name, set()).update(MATCHER_LABEL.findall(matchers))
    if not use.metrics:
        use.problems.append(f"no metric in {expr!r}")
    return use


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard_expressions(board: dict[str, Any]) -> list[str]:
    """Every panel target's PromQL (rows included)."""
    found = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [target["expr"] for target in inner.get("targets", [])]
    return found


def template_uses(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, label) of every `label_values(metric, label)` variable query."""
    found = []
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else ""
        match = re.fullmatch(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_]\w*)\s*\)", text)
        if text:
            assert match, f"variable {variable['name']}: {text!r} is not label_values(metric, label)"
            found.append((match[1], match[2]))
    return found


def exposed(text: str) -> dict[str, set[str]]:
    """Every sample name in an exposition, with the label names its samples carry."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def missing(expressions: list[str], templates: list[tuple[str, str]], scrape: dict[str, set[str]]) -> list[str]:
    """What the expressions use that the scrape does not have (empty: all there)."""
    problems = []
    for expr in expressions:
        use = parse(expr)
        problems += use.problems
        labels_here = set(TARGET_LABELS)
        for metric, matched in use.metrics.items():
            if metric in PROMETHEUS_OWN:
                continue
            if metric not in scrape:
                problems.append(f"{metric} (in {expr!r}) is not exposed")
                continue
            labels_here |= scrape[metric]
            unknown = matched - scrape[metric] - TARGET_LABELS
            if unknown:
                problems.append(f"{metric} has no label {sorted(unknown)} (in {expr!r})")
        unknown_grouping = use.grouping - labels_here
        if unknown_grouping and not (use.metrics.keys() <= PROMETHEUS_OWN):
            problems.append(f"grouping by {sorted(unknown_grouping)}: no such label (in {expr!r})")
    for metric, label in templates:
        if metric not in scrape:
            problems.append(f"{metric} (a dashboard variable) is not exposed")
        elif label not in scrape[metric] | TARGET_LABELS:
            problems.append(f"{metric} has no label {label} (a dashboard variable)")
    return problems


def paths() -> list[Path]:
    return [DASHBOARD, ALERTS]
