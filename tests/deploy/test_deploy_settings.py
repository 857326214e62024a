"""Every `LENDSTREAM_*` variable that deploy/ passes to lendstream is a setting lendstream has
(issue 8, done-when 2), and the compose file's values load without error."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from lendstream.settings import ENV_PREFIX, Settings, load_settings
from tests.deploy.conftest import DEPLOY

pytestmark = pytest.mark.timeout(900)

KNOWN = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
VARIABLE = re.compile(r"\bLENDSTREAM_[A-Z0-9_]+\b")


def lendstream_services(resolved: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name: {k: str(v) for k, v in s.get("environment", {}).items() if k.startswith(ENV_PREFIX)}
        for name, s in resolved["services"].items()
        if s.get("image", "").startswith("lendstream:")
    }


def test_compose_passes_only_known_settings(resolved_compose: dict[str, Any]) -> None:
    passed = {k for env in lendstream_services(resolved_compose).values() for k in env}
    assert passed, "no LENDSTREAM_* variable found: the check looks in the wrong place"
    assert passed <= KNOWN, sorted(passed - KNOWN)


def test_compose_settings_load(
    resolved_compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name, env in lendstream_services(resolved_compose).items():
        for variable in [v for v in os.environ if v.upper().startswith(ENV_PREFIX)]:
            monkeypatch.delenv(variable)
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        settings = load_settings()
        assert settings.replication_factor == 3, name


def test_manifests_pass_only_known_settings(k8s_documents: list[tuple[str, Any]]) -> None:
    passed: set[str] = set()
    for _, doc in k8s_documents:
        if doc["kind"] in ("ConfigMap", "Secret"):
            passed |= {k for k in {**doc.get("data", {}), **doc.get("stringData", {})}}
        for container in _containers(doc):
            passed |= {e["name"] for e in container.get("env", [])}
    passed = {p for p in passed if p.startswith(ENV_PREFIX)}
    assert len(passed) > 10
    assert passed <= KNOWN, sorted(passed - KNOWN)


def test_every_file_in_deploy_names_only_known_settings() -> None:
    """Also comments, the Dockerfile and the scripts: a renamed setting shows up here."""
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            unknown = set(VARIABLE.findall(path.read_text(errors="replace"))) - KNOWN
            assert not unknown, f"{path.relative_to(DEPLOY)}: {sorted(unknown)}"


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    template = doc.get("spec", {}).get("template", {})
    return list(template.get("spec", {}).get("containers", []))
