"""The OpenAPI document every service serves, with its errors documented as they are answered.

FastAPI documents a 422 as `application/json` with its own validation-error shape and no other error
at all; every Funnelcast error is RFC 9457 problem details. So each operation gets a `default`
response (any other status is an error, as problem+json) and every documented 4xx / 5xx answer
takes the problem+json content.
"""

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from shared.web import PROBLEM_JSON

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "one entry per invalid field (422)",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
PROBLEM_RESPONSE = {"description": "An error, as problem details", "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}}
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every operation's errors documented as problem+json."""
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_REF}}
            responses["default"] = PROBLEM_RESPONSE
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in FASTAPI_VALIDATION_SCHEMAS:
        components.pop(unused, None)
    components["Problem"] = PROBLEM_SCHEMA
    return schema


def install_documented_problems(app: FastAPI) -> None:
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
