"""The Grafana dashboard and the Prometheus alert rules shipped in deploy/: they load, they
are well formed, and every metric (and label) their expressions use is exposed by a real
running gateway's /metrics."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.helpers.gateway import APIS, Gateway
from tests.helpers.promql import (
    alert_rules,
    dashboard,
    dashboard_expressions,
    exposed,
    missing,
    parse,
    template_uses,
)


async def busy_scrape(gateway: Gateway) -> dict[str, set[str]]:
    """A scrape after traffic: a forwarded request, a refusal and a revocation, so that
    every labelled counter and histogram has samples."""
    await gateway.team("platform", ["read:apis"])
    token, kid = await gateway.token("platform", ["read:apis"])
    async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(token)) as r:
        assert r.status == 200
    async with gateway.session.get(gateway.url + APIS) as r:
        assert r.status == 401
    record = await gateway.runtime.store.get_token(kid)
    assert record is not None
    await gateway.runtime.store.put_token(record.revoked(0.0, "test"))
    for _ in range(100):  # the change reaches the cache
        if gateway.runtime.listener.lags or gateway.runtime.cache.stats.invalidations:
            break
        await asyncio.sleep(0.02)
    async with gateway.session.get(gateway.admin_url + "/metrics") as r:
        assert r.status == 200
        return exposed(await r.text())


def test_the_dashboard_loads_and_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [panel for panel in board["panels"] if panel["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert not parse(target["expr"]).problems, target["expr"]
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "instance"}


def test_the_alert_rules_load_and_are_well_formed() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)) and len(names) >= 10
    for rule in rules:
        assert re.fullmatch(r"Tokenward[A-Z][A-Za-z]+", rule["alert"])
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule["alert"]
        assert not parse(rule["expr"]).problems, rule["expr"]


def test_the_parser_catches_what_it_should() -> None:
    """The check below is only as good as its parser: a misspelled metric, a wrong label
    and an unknown function are each reported."""
    scrape = {"tokenward_requests_total": {"method", "route", "upstream", "step", "status"}}
    assert missing(['sum by (step) (rate(tokenward_requests_total{step="x"}[5m]))'], [], scrape) == []
    assert missing(["rate(tokenward_request_total[5m])"], [], scrape)
    assert missing(['sum(tokenward_requests_total{stage="x"})'], [], scrape)
    assert missing(["sum by (stage) (tokenward_requests_total)"], [], scrape)
    assert missing(["ratee(tokenward_requests_total[5m])"], [], scrape)
    assert missing([], [("tokenward_requests_total", "worker")], scrape)


@pytest.mark.parametrize("source", ["dashboard", "alert rules"])
async def test_every_metric_they_use_is_exposed(gateway: Gateway, source: str) -> None:
    scrape = await busy_scrape(gateway)
    if source == "dashboard":
        board = dashboard()
        expressions, templates = dashboard_expressions(board), template_uses(board)
    else:
        expressions, templates = [rule["expr"] for rule in alert_rules()], []
    assert expressions
    assert missing(expressions, templates, scrape) == []
