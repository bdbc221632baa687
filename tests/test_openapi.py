"""``GET /v1/openapi.json``: a valid OpenAPI 3.1 document that lists every route of the app.

The document is written by hand (``api/openapi.yaml``), so these checks are what keep it
true: every rule of ``create_app().url_map`` (path and method) must be in it with the same
path parameters, and it must pass openapi-spec-validator. ``tests/test_client.py`` checks
real answers of a running fleet against its schemas.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from depthfleet.api import create_app
from depthfleet.shared.settings import Settings
from support import openapi_problems

# Flask adds these to every rule; they are not operations of ours.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


def make_app() -> Flask:
    """The real app with API keys set (so public routes must be marked so); nothing connects."""
    return create_app(Settings(redis_url="redis://127.0.0.1:9/0", api_keys={"k-1": "t"}))


@pytest.fixture(scope="module")
def app() -> Flask:
    return make_app()


@pytest.fixture(scope="module")
def served(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/v1/openapi.json")  # no API key: a public route
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def openapi_path(rule: str) -> str:
    """``/v1/jobs/<job_id>/items/<int:index>`` -> ``/v1/jobs/{job_id}/items/{index}``."""
    return ARGUMENT.sub(r"{\1}", rule)


def routes(app: Flask) -> set[tuple[str, str]]:
    return {(openapi_path(rule.rule), method.lower()) for rule in app.url_map.iter_rules()
            for method in rule.methods or () if method not in IMPLICIT_METHODS}


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item
            if method in ("get", "put", "post", "delete", "patch")}


def undocumented(app: Flask, doc: dict[str, Any]) -> set[tuple[str, str]]:
    return routes(app) - documented(doc)


def test_the_document_is_valid_openapi_3_1(served):
    assert served["openapi"] == "3.1.0"
    validate(served, cls=OpenAPIV31SpecValidator)


def test_the_validator_refuses_a_broken_copy(served):
    broken = copy.deepcopy(served)
    del broken["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]["description"]
    with pytest.raises(OpenAPIValidationError):
        validate(broken, cls=OpenAPIV31SpecValidator)
    broken = copy.deepcopy(served)
    broken["paths"]["/v1/jobs/{job_id}"]["parameters"] = []  # {job_id} left undeclared
    with pytest.raises(OpenAPIValidationError):
        validate(broken, cls=OpenAPIV31SpecValidator)


def test_every_route_of_the_app_is_documented(app, served):
    assert undocumented(app, served) == set()
    assert documented(served) - routes(app) == set(), "documented, but no such route"


def test_a_route_added_without_documentation_is_caught(served):
    app = make_app()
    app.add_url_rule("/v1/jobs/<job_id>/thumbnails/<int:size>", "thumbs", lambda **_: "",
                     methods=["GET", "POST"])
    assert undocumented(app, served) == {("/v1/jobs/{job_id}/thumbnails/{size}", "get"),
                                         ("/v1/jobs/{job_id}/thumbnails/{size}", "post")}


def _path_parameters(doc: dict[str, Any], path: str, method: str) -> dict[str, dict]:
    item = doc["paths"][path]
    found = {}
    for param in [*item.get("parameters", []), *item[method].get("parameters", [])]:
        if "$ref" in param:
            param = doc["components"]["parameters"][param["$ref"].rsplit("/", 1)[-1]]
        if param["in"] == "path":
            found[param["name"]] = param["schema"]
    return found


def test_path_parameters_are_the_rules_arguments(app, served):
    for rule in app.url_map.iter_rules():
        for method in (rule.methods or set()) - IMPLICIT_METHODS:
            params = _path_parameters(served, openapi_path(rule.rule), method.lower())
            assert set(params) == set(rule.arguments), (rule.rule, method)
            for name, converter in rule._converters.items():
                integer = type(converter).__name__ == "IntegerConverter"
                assert (params[name].get("type") == "integer") == integer, (rule.rule, name)


def test_public_routes_are_the_ones_that_need_no_key(app, served):
    """``security: []`` exactly where auth lets a keyless request through."""
    from depthfleet.api.auth import PUBLIC_ENDPOINTS

    for rule in app.url_map.iter_rules():
        for method in (rule.methods or set()) - IMPLICIT_METHODS:
            operation = served["paths"][openapi_path(rule.rule)][method.lower()]
            assert (operation.get("security") == []) == (rule.endpoint in PUBLIC_ENDPOINTS), \
                (rule.rule, method)


def test_error_answers_fit_the_error_schema(app):
    client = app.test_client()
    for response in (client.get("/v1/jobs/" + "0" * 32),  # no key
                     client.get("/v1/jobs/nope", headers={"Authorization": "Bearer k-1"}),
                     client.post("/v1/uploads/check", data="{", headers={
                         "Authorization": "Bearer k-1", "Content-Type": "application/json"})):
        assert response.status_code in (400, 401, 404)
        assert openapi_problems(response.get_json(), "Error") == []
    assert openapi_problems({"error": {"code": "Not Found"}}, "Error") != []


def test_artifact_names_are_the_catalogs(served):
    """A new artifact in shared.artifacts fails here until the document names it too."""
    from depthfleet.shared.artifacts import ARTIFACTS

    assert served["components"]["schemas"]["ArtifactName"]["enum"] == list(ARTIFACTS)
