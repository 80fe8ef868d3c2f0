"""The OpenAPI document describes every route, field and error response."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from api_bridge.routes import HttpRoute, http_routes
from schemas import OPERATIONS

ROUTES = http_routes()
COMMON_ERRORS = {"400", "401", "429", "500", "502", "503", "504"}


@pytest.fixture(scope="module")
def document(bridge: Any) -> dict[str, Any]:
    response = httpx.get(f"{bridge.url}/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]]  # type: ignore[no-any-return]


def test_every_operation_has_its_routes(document: dict[str, Any]) -> None:
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}
    for operation in OPERATIONS:
        assert (operation.method, operation.path) in documented
    assert ("GET", "/api/v1/kms/keys/{version}") in documented
    assert ("GET", "/healthz") in documented


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.operation.method} {r.path}")
def test_route_documents_input_result_and_errors(
    document: dict[str, Any], route: HttpRoute
) -> None:
    operation = route.operation
    entry = document["paths"][route.path][operation.method.lower()]
    assert entry["summary"] == operation.summary
    assert operation.subject.value in entry["description"]

    if operation.method == "POST":
        body = entry["requestBody"]["content"]["application/json"]["schema"]
        schema = resolve(document, body)
        assert set(schema["properties"]) == set(operation.request.model_fields)
        required = {name for name, f in operation.request.model_fields.items() if f.is_required()}
        assert set(schema.get("required", [])) == required
    else:
        params = {p["name"]: p for p in entry["parameters"]}
        for name in route.path_params:
            assert params[name]["in"] == "path" and params[name]["required"]
        for name in route.query_params:
            assert params[name]["in"] == "query"
        covered = set(route.query_params) | {"key_version" if n == "version" else n
                                             for n in route.path_params}
        assert covered == set(operation.request.model_fields)

    responses = entry["responses"]
    success = responses[str(operation.success_status)]
    envelope = resolve(document, success["content"]["application/json"]["schema"])
    assert set(envelope["required"]) == {"data", "request_id", "timestamp"}
    data = resolve(document, envelope["properties"]["data"])
    assert set(data["properties"]) == set(operation.result.model_fields)
    assert "X-Request-ID" in success["headers"]

    assert set(responses) >= COMMON_ERRORS
    for status, response in responses.items():
        if status == str(operation.success_status):
            continue
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}
    assert "Retry-After" in responses["429"]["headers"]
    if operation.subject.value != "pqkms.v1.kms.keys.list":
        assert operation.not_found_code.value in responses["404"]["description"]


def test_generate_documents_201(document: dict[str, Any]) -> None:
    responses = document["paths"]["/api/v1/kms/keys/generate"]["post"]["responses"]
    assert "201" in responses and "200" not in responses
    assert "409" in responses


def test_error_envelope_has_both_code_fields(document: dict[str, Any]) -> None:
    error = document["components"]["schemas"]["ErrorBody"]
    assert {"code", "error_code", "message"} <= set(error["required"])


def test_api_key_security_scheme(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["ApiKeyAuth"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert document["security"] == [{"ApiKeyAuth": []}]
