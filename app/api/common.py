"""What the ``/api/v1`` routes share: the services, the redirection-token
query parameter, and how a pending flow is described to a page."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request

from app import flows, problems
from app.services import Services

NO_STORE = {"Cache-Control": "no-store"}


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def redirection_token_parameter(request: Request) -> str:
    token = request.query_params.get("redirection_token")
    if not token:
        raise problems.validation_error(
            "The redirection_token query parameter is required.",
            problems.InvalidField(
                name="redirection_token",
                error="invalid_value",
                title="This parameter is required.",
                pointer="/redirection_token",
            ),
        )
    return token


def flow_document(view: flows.FlowView, now: datetime, scopes: list[Any]) -> dict[str, Any]:
    """A flow's state for the page that completes it (login or consent);
    ``scopes`` is how that page lists the requested scopes."""
    document: dict[str, Any] = {"status": view.status}
    if view.client_id is not None:
        document["client"] = {"client_id": view.client_id, "name": view.client_name}
        document["scopes"] = scopes
    if view.status == "pending" and view.expires_at is not None:
        document["expires_at"] = view.expires_at.isoformat()
        document["expires_in"] = max(0, int((view.expires_at - now).total_seconds()))
    if view.restart_path is not None:
        document["restart_url"] = view.restart_path
    return document
