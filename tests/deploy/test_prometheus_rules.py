"""The alert rules and scrape config: promtool's checks and unit tests, and metric names that
exist."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.metric_names import (
    PROMETHEUS_SERIES,
    ROOT,
    RULE_TESTS,
    RULES,
    SCRAPE_CONFIG,
    code_metric_families,
    exported_names,
    load_rules,
    promql_metric_names,
    recorded_names,
)
from tests.deploy.tools import apt_tool

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def promtool() -> str:
    return apt_tool("promtool", "prometheus")


def run(promtool: str, *args: str, cwd: Path | None = None) -> None:
    done = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def test_rules_pass_promtool_check(promtool: str) -> None:
    run(promtool, "check", "rules", str(RULES))


def test_scrape_config_passes_promtool_check(promtool: str) -> None:
    run(promtool, "check", "config", SCRAPE_CONFIG.name, cwd=SCRAPE_CONFIG.parent)


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_every_alert_has_a_unit_test_where_it_fires_and_a_runbook_entry() -> None:
    alerts = {rule["alert"] for rule in load_rules() if "alert" in rule}
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test["alert_rule_test"]]  # fmt: skip
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    assert alerts <= fired, f"alerts no promtool test sees firing: {sorted(alerts - fired)}"
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for alert in alerts:
        assert f"## {alert}" in runbook, f"{alert} has no section in docs/runbook.md"
    for rule in load_rules():
        if "alert" in rule:
            assert rule["annotations"]["runbook"].endswith("#" + rule["alert"].lower())


def test_every_metric_a_rule_uses_is_exported() -> None:
    rules = load_rules()
    known = exported_names(code_metric_families()) | recorded_names(rules) | PROMETHEUS_SERIES
    for rule in rules:
        used = promql_metric_names(rule["expr"])
        assert used, f"no metric found in {rule['expr']!r}"
        missing = used - known
        name = rule.get("alert") or rule.get("record")
        assert not missing, f"{name} uses metrics nobody exports: {sorted(missing)}"
