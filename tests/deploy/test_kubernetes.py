"""deploy/k8s/: every manifest validates against the Kubernetes OpenAPI schemas
(kubernetes-validate: offline, strict, so unknown fields fail), the KEDA ScaledObject against a
schema of its CRD written here, and the manifests agree with the relay (probes, grace period,
metrics directory, queue key).
"""

from __future__ import annotations

import copy
import os
import urllib.parse
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kubernetes_validate import utils as kubernetes_validate

from relay.keys import Keys
from relay.settings import Settings
from relay.supervisor import SHUTDOWN_TIMEOUT_MS
from tests.deploy import K8S_DIR, load_yaml_documents

KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
"""The oldest minor still commonly run, and the newest the validator knows."""
NAMESPACE = "sns-relay"
INGEST_PORT = 8080
METRICS_PORT = 9191
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (what containers must listen on; compared, not bound)

# A subset of KEDA 2.x's ScaledObject CRD (keda.sh/v1alpha1): KEDA is not part of Kubernetes, so
# kubernetes-validate has no schema for it. Strict where a typo would silently disable scaling.
_TRIGGER_METADATA_REDIS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["listName", "listLength"],
    "properties": {
        name: {"type": "string"}
        for name in (
            "address",
            "addressFromEnv",
            "host",
            "hostFromEnv",
            "port",
            "portFromEnv",
            "usernameFromEnv",
            "passwordFromEnv",
            "listName",
            "listLength",
            "activationListLength",
            "databaseIndex",
            "enableTLS",
            "unsafeSsl",
        )
    },
}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "redis"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"type": "string"},
                                },
                            },
                            "metadata": _TRIGGER_METADATA_REDIS,
                        },
                    },
                },
            },
        },
    },
}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) of every Kubernetes object in deploy/k8s/*.yaml (KEDA's aside)."""
    return [
        (path.name, doc)
        for path in sorted(K8S_DIR.glob("*.yaml"))
        for doc in load_yaml_documents(path)
    ]


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [
        doc for _, doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container(deployment).get("env", [])}


def scaled_object() -> dict[str, Any]:
    (document,) = load_yaml_documents(K8S_DIR / "keda" / "scaledobject.yaml")
    result: dict[str, Any] = document
    return result


def config_data() -> dict[str, str]:
    data: dict[str, str] = find("ConfigMap", "sns-relay-config")["data"]
    return data


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    ("file", "document"),
    manifests(),
    ids=[f"{file}:{doc['kind']}/{doc['metadata']['name']}" for file, doc in manifests()],
)
def test_each_manifest_validates_strictly_against_the_kubernetes_schema(
    file: str, document: dict[str, Any], version: str
) -> None:
    """kubernetes-validate (strict) accepts the object for the oldest and newest versions."""
    kubernetes_validate.validate(document, version, strict=True)


def test_the_kubernetes_validator_rejects_a_misspelled_field() -> None:
    """Strict validation is on: a typo (terminationGracePeriod) is an error, not ignored."""
    broken = copy.deepcopy(find("Deployment", "sns-relay-worker"))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_keda_scaled_object_validates_against_the_crd_schema() -> None:
    """The ScaledObject, a KEDA CRD that kubernetes-validate has no schema for, fits KEDA's."""
    jsonschema.validate(scaled_object(), SCALED_OBJECT_SCHEMA)


def test_the_keda_schema_rejects_a_misspelled_trigger_field() -> None:
    """A typo in the trigger (listname) would disable scaling: the schema catches it."""
    broken = scaled_object()
    metadata = broken["spec"]["triggers"][0]["metadata"]
    metadata["listname"] = metadata.pop("listName")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCALED_OBJECT_SCHEMA)


def test_the_scaling_behavior_keda_hands_to_its_hpa_is_a_valid_autoscaling_v2_behavior() -> None:
    """KEDA copies `advanced.horizontalPodAutoscalerConfig.behavior` into the HPA it makes."""
    spec = scaled_object()["spec"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-sns-relay-worker", "namespace": NAMESPACE},
        "spec": {
            "scaleTargetRef": {
                k: spec["scaleTargetRef"][k] for k in ("apiVersion", "kind", "name")
            },
            "minReplicas": spec["minReplicaCount"],
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)


def test_keda_scales_the_worker_deployment_on_the_relays_queue_list() -> None:
    """The trigger reads `<RELAY_NAMESPACE>:events` on the relay's Redis, for the worker pods."""
    spec = scaled_object()["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sns-relay-worker",
    }
    (trigger,) = spec["triggers"]
    metadata = trigger["metadata"]
    assert (
        metadata["listName"] == Keys(config_data()["RELAY_NAMESPACE"]).queue == "sns-relay:events"
    )
    redis_url = urllib.parse.urlsplit(config_data()["RELAY_REDIS_URL"])
    assert metadata["address"] == f"{redis_url.hostname}:{redis_url.port}"
    assert metadata["databaseIndex"] == redis_url.path.strip("/")
    # Bundles, not events: one waiting bundle per worker thread of a pod (2 processes x 8).
    args = container(find("Deployment", "sns-relay-worker"))["args"]
    threads = int(args[args.index("--processes") + 1]) * int(args[args.index("--threads") + 1])
    assert int(metadata["listLength"]) == threads
    assert spec["minReplicaCount"] >= 1, "the queue gauges need one worker running"


def test_the_worker_grace_period_outlasts_its_shutdown_timeout() -> None:
    """terminationGracePeriodSeconds leaves 10 s beyond the worker's 30 s in-flight timeout."""
    pod = find("Deployment", "sns-relay-worker")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= SHUTDOWN_TIMEOUT_MS / 1000 + 10


def test_the_worker_metrics_directory_is_an_emptydir() -> None:
    """PROMETHEUS_MULTIPROC_DIR and TMPDIR (where `relay worker` makes it) are on an emptyDir."""
    deployment = find("Deployment", "sns-relay-worker")
    volumes = {
        volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]
    }
    mounts = {mount["mountPath"]: mount["name"] for mount in container(deployment)["volumeMounts"]}
    env = env_of(deployment)
    for variable in ("PROMETHEUS_MULTIPROC_DIR", "TMPDIR"):
        path = env[variable]["value"]
        assert "emptyDir" in volumes[mounts[path]], variable


def test_the_worker_serves_metrics_on_all_interfaces_at_its_container_port() -> None:
    """RELAY_METRICS_HOST 0.0.0.0 and RELAY_METRICS_PORT equal to the `metrics` container port."""
    ports = {
        port["name"]: port["containerPort"]
        for port in container(find("Deployment", "sns-relay-worker"))["ports"]
    }
    assert config_data()["RELAY_METRICS_HOST"] == ALL_INTERFACES
    assert ports["metrics"] == int(config_data()["RELAY_METRICS_PORT"]) == METRICS_PORT


def test_the_ingest_probes_readyz_and_healthz_on_port_8080_behind_its_service() -> None:
    """Readiness on /readyz, liveness on /healthz, both on the 8080 port the Service targets."""
    deployment = find("Deployment", "sns-relay-ingest")
    ingest = container(deployment)
    ports = {port["name"]: port["containerPort"] for port in ingest["ports"]}
    assert ingest["args"][:1] == ["ingest"]
    assert ingest["args"][ingest["args"].index("--port") + 1] == str(INGEST_PORT)
    assert ingest["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ingest["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert ports[ingest[probe]["httpGet"]["port"]] == INGEST_PORT
    service = find("Service", "sns-relay-ingest")
    assert ports[service["spec"]["ports"][0]["targetPort"]] == INGEST_PORT
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_secrets_reach_only_the_pods_that_use_them() -> None:
    """The webhook secret goes to the ingest only; the SNS keys to the workers only, optional."""
    secret = find("Secret", "sns-relay-secrets")
    assert {"RELAY_SNS_KEY", "RELAY_SNS_SECRET", "RELAY_WEBHOOK_SECRET"} <= set(
        secret["stringData"]
    )
    ingest_env = env_of(find("Deployment", "sns-relay-ingest"))
    worker_env = env_of(find("Deployment", "sns-relay-worker"))
    assert (
        ingest_env["RELAY_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["name"]
        == "sns-relay-secrets"
    )
    assert not {"RELAY_SNS_KEY", "RELAY_SNS_SECRET"} & set(ingest_env)
    assert "RELAY_WEBHOOK_SECRET" not in worker_env
    for name in ("RELAY_SNS_KEY", "RELAY_SNS_SECRET", "RELAY_SNS_EXTERNAL_ID"):
        reference = worker_env[name]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": "sns-relay-secrets", "key": name, "optional": True}
    for deployment in ("sns-relay-ingest", "sns-relay-worker"):
        assert {"configMapRef": {"name": "sns-relay-config"}} in container(
            find("Deployment", deployment)
        )["envFrom"]


def test_the_config_map_is_a_valid_relay_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key is a RELAY_* setting with a non-empty value, and Settings.load accepts them."""
    known = {f"RELAY_{name.upper()}" for name in Settings.model_fields}
    data = config_data()
    assert set(data) <= known
    assert all(value.strip() for value in data.values()), "an empty value is not 'unset'"
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings.load()
    assert settings.namespace == "sns-relay"
    assert settings.metrics_host == ALL_INTERFACES
    assert os.environ["RELAY_SNS_TOPIC_ARN"] == settings.require_topic_arn()


def test_every_disruption_budget_and_service_selects_pods_of_a_workload() -> None:
    """Each PodDisruptionBudget and Service selector matches the pod labels of one workload."""
    workloads = [doc for _, doc in manifests() if doc["kind"] in ("Deployment", "StatefulSet")]
    selectors = [
        (
            doc["metadata"]["name"],
            doc["spec"]["selector"]["matchLabels"]
            if doc["kind"] == "PodDisruptionBudget"
            else doc["spec"]["selector"],
        )
        for _, doc in manifests()
        if doc["kind"] in ("PodDisruptionBudget", "Service")
    ]
    assert {name for name, _ in selectors} >= {"sns-relay-ingest", "sns-relay-worker", "redis"}
    for name, selector in selectors:
        matching = [
            workload["metadata"]["name"]
            for workload in workloads
            if selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matching) == 1, (name, matching)


def test_every_object_lives_in_the_relays_namespace() -> None:
    """namespace.yaml creates `sns-relay` and every other object is in it."""
    assert find("Namespace", NAMESPACE)
    for file, doc in manifests():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, file
    assert scaled_object()["metadata"]["namespace"] == NAMESPACE


def test_redis_keeps_an_aof_fsynced_every_second_and_refuses_writes_when_full() -> None:
    """The Redis StatefulSet runs AOF everysec, noeviction, and a maxmemory under its limit."""
    redis = container(find("StatefulSet", "redis"))
    flags = dict(zip(redis["args"][::2], redis["args"][1::2], strict=True))
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction"
    maxmemory_mib = int(flags["--maxmemory"].removesuffix("mb"))
    limit_gib = int(redis["resources"]["limits"]["memory"].removesuffix("Gi"))
    assert maxmemory_mib < limit_gib * 1024


def test_every_relay_container_runs_as_a_non_root_user_on_a_read_only_root() -> None:
    """The relay's pods: non-root, no privilege escalation, read-only root, no capabilities."""
    for name in ("sns-relay-ingest", "sns-relay-worker"):
        deployment = find("Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        security = container(deployment)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]


def test_the_manifests_directory_holds_only_kubernetes_objects() -> None:
    """`kubectl apply -f deploy/k8s/` applies every file there: each is a list of objects."""
    files = sorted(path.name for path in K8S_DIR.iterdir() if path.is_file())
    assert files, K8S_DIR
    assert all(name.endswith(".yaml") for name in files), files
    assert Path(K8S_DIR / "keda").is_dir()
