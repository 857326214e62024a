"""deploy/k8s (issue 8, done-when 2): every manifest validated against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields are errors), and the worker set-up checked."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import K8S_DIR

pytestmark = pytest.mark.timeout(600)  # the first run may install kubernetes-validate

KUBERNETES_VERSION = "1.30.0"


def by_kind(documents: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents if doc["kind"] == kind]


def test_every_manifest_passes_the_kubernetes_schema(
    k8s_documents: list[tuple[str, dict[str, Any]]],
) -> None:
    import kubernetes_validate

    assert len(k8s_documents) >= 7
    for name, doc in k8s_documents:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_the_validator_rejects_a_misspelt_field(
    k8s_documents: list[tuple[str, dict[str, Any]]],
) -> None:
    import copy

    import kubernetes_validate

    statefulset = copy.deepcopy(by_kind(k8s_documents, "StatefulSet")[0])
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest(yaml_module: Any) -> None:
    kustomization = yaml_module.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_workers_keep_rocksdb_on_a_volume_and_are_ready_on_health(
    k8s_documents: list[tuple[str, dict[str, Any]]],
) -> None:
    (statefulset,) = by_kind(k8s_documents, "StatefulSet")
    (settings,) = [c for c in by_kind(k8s_documents, "ConfigMap")]
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    data_mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
    assert [m["mountPath"] for m in data_mounts] == [settings["data"]["LENDSTREAM_DATA_DIR"]]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "httpGet" not in container["livenessProbe"], (
        "recovery answers 503: not a liveness signal"
    )
    assert container["ports"][0]["containerPort"] == int(settings["data"]["LENDSTREAM_WEB_PORT"])
    assert settings["data"]["LENDSTREAM_WEB_HOST"] == "0.0.0.0"
    assert settings["data"]["LENDSTREAM_CREATE_TOPICS"] == "false"
    referenced = {
        src.get("configMapRef", src.get("secretRef"))["name"] for src in container["envFrom"]
    }
    defined = {d["metadata"]["name"] for d in by_kind(k8s_documents, "ConfigMap")} | {
        d["metadata"]["name"] for d in by_kind(k8s_documents, "Secret")
    }
    assert referenced <= defined


def test_disruption_budget_and_headless_service_select_the_workers(
    k8s_documents: list[tuple[str, dict[str, Any]]],
) -> None:
    (statefulset,) = by_kind(k8s_documents, "StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    (pdb,) = by_kind(k8s_documents, "PodDisruptionBudget")
    (service,) = by_kind(k8s_documents, "Service")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]


def test_a_job_applies_the_topics(k8s_documents: list[tuple[str, dict[str, Any]]]) -> None:
    (job,) = by_kind(k8s_documents, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["topics", "apply"]


def test_secrets_are_placeholders(k8s_documents: list[tuple[str, dict[str, Any]]]) -> None:
    for secret in by_kind(k8s_documents, "Secret"):
        for key, value in secret["stringData"].items():
            if "PASSWORD" in key or "DSN" in key or key.endswith(".crt"):
                assert "REPLACE_ME" in value, (secret["metadata"]["name"], key)
