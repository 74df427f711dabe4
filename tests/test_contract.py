"""Baton's served OpenAPI document agrees with the Lenses HQ login contract.

The contract lives in ``../shared/spec/login-openapi.json`` beside the checkout
(as in CI); it is not copied into the repository.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.api.routes import openapi_document

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "spec" / "login-openapi.json"


@pytest.fixture(scope="module")
def contract() -> dict[str, Any]:
    if not CONTRACT.is_file():
        pytest.skip(f"the login contract is not beside the checkout ({CONTRACT})")
    document: dict[str, Any] = json.loads(CONTRACT.read_text("utf-8"))
    return document


def _shape(schema: dict[str, Any]) -> dict[str, Any]:
    """What must agree: types, refs, formats, enums, properties and required fields."""
    shape: dict[str, Any] = {}
    for key in ("type", "$ref", "format", "enum"):
        if key in schema:
            shape[key] = schema[key]
    if "properties" in schema:
        shape["properties"] = {k: _shape(v) for k, v in schema["properties"].items()}
    if "items" in schema:
        shape["items"] = _shape(schema["items"])
    shape["required"] = sorted(schema.get("required", []))
    return shape


def test_every_contract_schema_is_served_identically(contract: dict[str, Any]) -> None:
    ours = openapi_document()["components"]["schemas"]
    for name, schema in contract["components"]["schemas"].items():
        assert name in ours, f"{name} is missing from Baton's OpenAPI document"
        assert _shape(ours[name]) == _shape(schema), name


def test_login_operation_matches_the_contract(contract: dict[str, Any]) -> None:
    theirs = contract["paths"]["/api/v1/login"]["post"]
    ours = openapi_document()["paths"]["/api/v1/login"]["post"]
    assert ours["operationId"] == theirs["operationId"]
    assert ours["requestBody"] == theirs["requestBody"]
    assert ours["responses"]["200"]["content"] == theirs["responses"]["200"]["content"]
    their_error = theirs["responses"]["default"]["content"]["application/json"]["schema"]
    our_error = ours["responses"]["default"]["content"]["application/problem+json"]["schema"]
    assert our_error == their_error


def test_the_document_is_served(client: TestClient) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.json() == openapi_document()
    assert set(response.json()["paths"]) >= {"/api/v1/login", "/api/v1/logout", "/api/v1/users/me"}
