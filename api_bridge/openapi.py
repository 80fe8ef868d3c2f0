"""The OpenAPI document, built from the contract in ``schemas/``.

The bridge never validates bodies with the models (the worker does); the models are
used here only to describe every route: request body or parameters, the result
inside the success envelope, and the error envelope for each status that applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field, create_model
from pydantic.json_schema import models_json_schema

from schemas.envelope import ErrorEnvelope
from schemas.errors import ErrorCode
from schemas.subjects import HEADER_API_KEY, HEADER_REQUEST_ID, HEADER_RETRY_AFTER

__all__ = [
    "HealthStatus",
    "error_responses",
    "field_schema",
    "install_openapi",
    "json_body",
    "success_envelope_model",
]

_SCHEMA_REF = "#/components/schemas/{model}"
_SECURITY_SCHEME = "ApiKeyAuth"

REQUEST_ID_RESPONSE_HEADER = {
    HEADER_REQUEST_ID: {
        "description": "The request id: the caller's X-Request-ID or a generated UUID4",
        "schema": {"type": "string"},
    }
}
REQUEST_ID_PARAMETER: dict[str, Any] = {
    "name": HEADER_REQUEST_ID,
    "in": "header",
    "required": False,
    "description": "Id for tracing (1-128 visible ASCII characters); generated when absent",
    "schema": {"type": "string"},
}

_STATUS_DESCRIPTIONS = {
    400: "Invalid request (bad JSON, not an object, too large, failed validation)",
    401: "Invalid or missing API key",
    403: "Operation not allowed by policy (key state, plan limit)",
    404: "Not found",
    409: "Conflict with the key's current state",
    429: "Rate limit exceeded; see Retry-After",
    500: "Internal error",
    502: "A worker sent an invalid reply",
    503: "No worker available, or the message bus is down",
    504: "No reply from a worker in time",
}


class HealthStatus(BaseModel):
    """``GET /healthz``: 200 only when NATS is connected and a worker answers that it can
    serve (its database reads, its audit trail writes)."""

    status: str = Field(description="ok or unavailable", examples=["ok"])
    nats: str = Field(description="connected or disconnected")
    workers: str = Field(description="responding, degraded, not responding or unknown")
    database: str | None = Field(
        default=None, description="with workers degraded: ok or unavailable (the worker's read)"
    )
    audit: str | None = Field(
        default=None,
        description="with workers degraded: ok, failing (writes fail), stalled (a commit or "
        "ack has taken half the request timeout) or off",
    )


@cache
def success_envelope_model(result: type[BaseModel]) -> type[BaseModel]:
    """``{"data": <result>, "request_id", "timestamp"}`` for one result model."""
    return create_model(
        f"{result.__name__}Envelope",
        __doc__=f"Success envelope around {result.__name__}.",
        data=(result, ...),
        request_id=(str, ...),
        timestamp=(str, Field(description="ISO-8601 UTC, e.g. 2026-02-15T10:30:00.123Z")),
    )


def _codes_for(status: int) -> list[str]:
    return [code.value for code in ErrorCode if code.http_status == status]


def error_responses(
    statuses: Iterable[int], not_found_code: ErrorCode | None = None
) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` entries: the error envelope for each status.

    The codes listed per status are read from the registry, not copied.
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(statuses):
        codes = _codes_for(status)
        if status == 404 and not_found_code is not None:
            codes = [not_found_code.value, ErrorCode.NOT_FOUND.value]
        headers = dict(REQUEST_ID_RESPONSE_HEADER)
        if status == 429:
            headers[HEADER_RETRY_AFTER] = {
                "description": "Seconds to wait before retrying",
                "schema": {"type": "integer", "minimum": 0},
            }
        responses[status] = {
            "model": ErrorEnvelope,
            "description": f"{_STATUS_DESCRIPTIONS.get(status, 'Error')} ({', '.join(codes)})",
            "headers": headers,
        }
    return responses


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI requestBody that refers to the model's (validation) schema."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": _SCHEMA_REF.format(model=model.__name__)}}
        },
    }


def field_schema(model: type[BaseModel], field: str) -> dict[str, Any]:
    """The JSON schema of one field, inlined, for a query or path parameter."""
    full = model.model_json_schema(mode="validation")
    definitions = full.get("$defs", {})

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return dict(definitions[ref.rsplit("/", 1)[-1]]) if ref else dict(schema)

    schema = resolve(full["properties"][field])
    if "anyOf" in schema:  # Optional[X]: the parameter is simply left out instead
        options = [resolve(s) for s in schema["anyOf"] if s.get("type") != "null"]
        if len(options) == 1:
            schema = {**{k: v for k, v in schema.items() if k != "anyOf"}, **options[0]}
    if schema.get("default", ...) is None:
        del schema["default"]
    schema.pop("title", None)
    return schema


def install_openapi(app: FastAPI, request_models: Iterable[type[BaseModel]]) -> None:
    """Generate the document once, adding the request models and the API-key scheme."""
    models = list(dict.fromkeys(request_models))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = document.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        _, definitions = models_json_schema(
            [(model, "validation") for model in models], ref_template=_SCHEMA_REF
        )
        for name, schema in definitions.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        components["securitySchemes"] = {
            _SECURITY_SCHEME: {"type": "apiKey", "in": "header", "name": HEADER_API_KEY}
        }
        document["security"] = [{_SECURITY_SCHEME: []}]
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
