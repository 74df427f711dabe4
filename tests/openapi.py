"""Validate responses against the OpenAPI document Baton serves."""

from __future__ import annotations

from typing import Any

import httpx2
from jsonschema import Draft7Validator

from app.api.routes import openapi_document


def _schema_for(path: str, method: str, status: int, media_type: str) -> dict[str, Any] | None:
    operation = openapi_document()["paths"][path][method.lower()]
    responses = operation["responses"]
    response = responses.get(str(status)) or responses["default"]
    content = response.get("content")
    if content is None:
        return None
    assert media_type in content, f"{media_type} not documented for {method} {path} {status}"
    schema: dict[str, Any] = content[media_type]["schema"]
    return schema


def assert_documented(response: httpx2.Response, path: str, method: str = "POST") -> None:
    """The response's status, media type and body are what the document says."""
    media_type = response.headers.get("content-type", "").split(";")[0]
    schema = _schema_for(path, method, response.status_code, media_type)
    if schema is None:
        assert not response.content, f"{response.status_code} must have no body"
        return
    document = {**schema, "components": openapi_document()["components"]}
    errors = sorted(Draft7Validator(document).iter_errors(response.json()), key=str)
    assert not errors, f"{method} {path} {response.status_code}: {[e.message for e in errors]}"
