"""deploy/ and docker-compose.yml against the real schemas, not only against our own rules.

Kubernetes' own objects go through kubernetes-validate with Kubernetes 1.37's strict schemas
(an unknown field is an error, as with ``kubectl apply``'s strict field validation). The custom
resources go through the schemas in tests/schemas/: KEDA's ScaledObject and the Prometheus
Operator's PrometheusRule, written from their CRDs (each file's ``$comment`` names the CRD and
its version), with Kubernetes' own ObjectMeta from kubernetes-validate. The compose file goes
through the Compose Specification's JSON schema as check-jsonschema ships it
(``vendor.compose-spec``), after interpolation with .env.example, which is where ``docker
compose`` validates it too. Each validator also gets broken copies and must refuse them.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from referencing import Registry, Resource

from test_deploy_files import interpolate, parse_env_file, read
from test_k8s_manifests import Manifests, container, deployment, documents, load_manifests

SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S_VERSION = "1.37"
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
               ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-v1.json"}
# Read by `kubectl apply -k` itself, never sent to the API server, so it has no API schema.
CLIENT_SIDE = {("kustomize.config.k8s.io/v1beta1", "Kustomization")}


# ---------------------------------------------------------------------------------- schemas
@functools.cache
def crd_validator(name: str) -> jsonschema.protocols.Validator:
    """A validator for one of tests/schemas/, resolving ObjectMeta to Kubernetes' own."""
    definitions = (resources.files("kubernetes_validate") / "kubernetes-json-schema"
                   / f"v{K8S_VERSION}.0-local-strict" / "_definitions.json")
    registry = Resource.from_contents(json.loads(definitions.read_text())) @ Registry()
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def compose_validator() -> jsonschema.protocols.Validator:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def where(error: jsonschema.ValidationError) -> str:
    return ".".join(map(str, error.absolute_path)) or "(top)"


# ----------------------------------------------------------------------------------- checks
def check_k8s_document(doc: dict[str, Any]) -> list[str]:
    """Problems of one manifest document under its kind's schema; a kind without one is one."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if key in CLIENT_SIDE:
        return []
    if key in CRD_SCHEMAS:
        return [f"{name}: {where(e)}: {e.message}"
                for e in crd_validator(CRD_SCHEMAS[key]).iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{name}: {where(exc)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{name}: no schema to check it against ({exc.message})"]
    return []


def check_manifests(manifests: Manifests) -> list[str]:
    return [f"{file}: {problem}" for file, docs in manifests.items() for doc in docs
            for problem in check_k8s_document(doc)]


def check_compose(compose: dict[str, Any]) -> list[str]:
    return [f"docker-compose.yml: {where(e)}: {e.message}"
            for e in compose_validator().iter_errors(compose)]


# ------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def manifests() -> Manifests:
    return load_manifests()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    import yaml

    return interpolate(yaml.safe_load(read("docker-compose.yml")),
                       parse_env_file(read(".env.example")))


def test_every_manifest_kind_has_a_schema(manifests: Manifests) -> None:
    kinds = {(d["apiVersion"], d["kind"]) for d in documents(manifests)}
    assert set(CRD_SCHEMAS) <= kinds  # the CRD schemas are used, not merely present
    assert ("apps/v1", "Deployment") in kinds


def test_manifests_match_the_kubernetes_and_crd_schemas(manifests: Manifests) -> None:
    assert check_manifests(manifests) == []


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert check_compose(compose) == []


def test_broken_manifests_are_refused(manifests: Manifests) -> None:
    """Wrong types and unknown fields, in core objects and in both custom resources."""

    def broken(edit: Callable[[Manifests], object]) -> list[str]:
        data = copy.deepcopy(manifests)
        edit(data)
        return check_manifests(data)

    def scaled(data: Manifests) -> dict[str, Any]:
        return next(documents(data, "ScaledObject"))

    def rule(data: Manifests) -> dict[str, Any]:
        return next(documents(data, "PrometheusRule"))["spec"]["groups"][0]["rules"][0]

    cases = {
        "replicas as words": broken(
            lambda d: deployment(d, "worker")["spec"].update(replicas="two")),
        "misspelt container field": broken(
            lambda d: container(deployment(d, "api")).update(imagePullPolcy="Always")),
        "port as text": broken(
            lambda d: container(deployment(d, "api"))["ports"][0].update(containerPort="http")),
        "unknown kind": check_k8s_document(
            {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}),
        "scaler count as text": broken(lambda d: scaled(d)["spec"].update(minReplicaCount="1")),
        "unknown scaler field": broken(lambda d: scaled(d)["spec"].update(maxReplicas=5)),
        "trigger metadata not a string": broken(
            lambda d: scaled(d)["spec"]["triggers"][0]["metadata"].update(listLength=4)),
        "trigger without type": broken(lambda d: scaled(d)["spec"]["triggers"][0].pop("type")),
        "scaler metadata field": broken(lambda d: scaled(d)["metadata"].update(label={"a": "b"})),
        "rule duration in words": broken(lambda d: rule(d).update({"for": "15 minutes"})),
        "unknown rule field": broken(lambda d: rule(d).update(severity="critical")),
        "rule without expr": broken(lambda d: rule(d).pop("expr")),
    }
    assert [name for name, problems in cases.items() if not problems] == []


def test_broken_compose_files_are_refused(compose: dict[str, Any]) -> None:

    def broken(edit: Callable[[dict[str, Any]], object]) -> list[str]:
        data = copy.deepcopy(compose)
        edit(data)
        return check_compose(data)

    services = lambda d: d["services"]  # noqa: E731
    cases = {
        "unknown service field": broken(lambda d: services(d)["api"].update(restart_policy="always")),
        "unknown top-level key": broken(lambda d: d.update(service={})),
        "healthcheck test as a mapping": broken(
            lambda d: services(d)["redis"]["healthcheck"].update(test={"cmd": "redis-cli"})),
        "misspelt limit": broken(
            lambda d: services(d)["worker"]["deploy"]["resources"]["limits"].update(memroy="1g")),
        "depends_on condition": broken(
            lambda d: services(d)["api"]["depends_on"]["redis"].update(condition="service_up")),
        "volumes as a string": broken(lambda d: services(d)["worker"].update(volumes="cache")),
    }
    assert [name for name, problems in cases.items() if not problems] == []
