"""The provisioned Grafana dashboard: well-formed, every query valid PromQL over metrics that
exist."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.metric_names import (
    DASHBOARD,
    PROMETHEUS_SERIES,
    code_metric_families,
    dashboard_queries,
    exported_names,
    promql_metric_names,
)
from tests.deploy.tools import apt_tool

pytestmark = pytest.mark.timeout(600)
PROVISIONING = DASHBOARD.parents[1] / "provisioning"


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, f"{panel['title']} uses undefined {used - variables}"


def test_every_metric_a_panel_uses_is_exported() -> None:
    known = exported_names(code_metric_families()) | PROMETHEUS_SERIES
    for where, query in dashboard_queries():
        used = promql_metric_names(query)
        assert used, f"{where}: no metric in {query!r}"
        assert used <= known, f"{where} uses metrics nobody exports: {sorted(used - known)}"


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    used = set().union(*(promql_metric_names(q) for _, q in dashboard_queries()))
    for name in (
        "lendstream_consumer_lag_messages", "lendstream_consumer_lag_seconds",
        "lendstream_events_total", "lendstream_end_to_end_seconds_bucket",
        "lendstream_dead_letters", "lendstream_saga_instances", "lendstream_pg_pool_connections",
        "process_cpu_seconds_total",
    ):  # fmt: skip
        assert name in used, f"no panel shows {name}"


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (Grafana variables substituted) as a recording rule."""
    promtool = apt_tool("promtool", "prometheus")
    rules = [
        {"record": f"dashboard:query_{n}", "expr": _substitute(query)}
        for n, (_, query) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _substitute(query: str) -> str:
    return query.replace("$__rate_interval", "5m").replace("$group", ".*").replace("$topic", ".*")


def test_provisioning_files_point_at_the_dashboard() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "lendstream.yaml").read_text())
    assert providers["providers"][0]["type"] == "file"
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert sources["datasources"][0]["type"] == "prometheus"
