"""Dynamic client registration (RFC 7591), for MCP clients and other tools
that register themselves. Off unless ``BATON_DCR=true``; what registers here is
never first-party, so its users are always asked for consent."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import AccessDeniedError
from authlib.oauth2.rfc7591 import (
    ClientMetadataClaims,
    ClientRegistrationEndpoint,
    InvalidRedirectURIError,
)
from authlib.oauth2.rfc7591.errors import InvalidClientMetadataError
from joserfc.errors import InvalidClaimError

from app import audit, clients
from app.oauth.discovery import metadata

if TYPE_CHECKING:
    from app.oauth.server import BatonAuthorizationServer

MAX_METADATA_STRING = 2000
MAX_METADATA_LIST = 20
PUBLIC_METHOD = "none"  # token_endpoint_auth_method of a client without a secret
# RFC 7591 §2 metadata that Baton reads or authlib validates, by JSON type.
_STRINGS = (
    "token_endpoint_auth_method",
    "client_name",
    "client_uri",
    "logo_uri",
    "scope",
    "tos_uri",
    "policy_uri",
    "jwks_uri",
    "software_id",
    "software_version",
)
_STRING_LISTS = ("grant_types", "response_types", "contacts")
# Control characters have no place in metadata; NUL cannot even be stored in
# PostgreSQL text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNDESCRIBABLE = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


class _ClientMetadataClaims(ClientMetadataClaims):
    def validate_redirect_uris(self) -> None:
        # Checked before, by Baton's stricter rule (_check_redirect_uris):
        # authlib's wants a host, which the private-use scheme of a native
        # app (``com.example.app:/callback``, RFC 8252 §7.1) has not.
        return None

    def validate_jwks(self) -> None:
        # joserfc answers some malformed key sets ({}, an unknown curve) with
        # KeyError or TypeError instead of an error of its own.
        try:
            super().validate_jwks()
        except (KeyError, TypeError, AttributeError) as error:
            raise InvalidClaimError("jwks") from error


def _describable(text: str) -> str:
    """``text`` within the characters an error description may hold (RFC 6749
    §5.2: visible ASCII but '"' and '\\'), which an echoed URI may not be."""
    return _UNDESCRIBABLE.sub("?", text)


def _check_redirect_uris(uris: Any) -> list[str]:
    """RFC 7591 §2 with RFC 8252 §7 / OAuth 2.1 §2.3: https, http on
    loopback, or a reverse-domain private-use scheme; absolute, without a
    fragment or user information."""
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
        raise InvalidRedirectURIError("'redirect_uris' must be a non-empty list of URIs.")
    if len(uris) > clients.MAX_REDIRECT_URIS:
        raise InvalidRedirectURIError(
            f"At most {clients.MAX_REDIRECT_URIS} redirect URIs may be registered."
        )
    for uri in uris:
        if len(uri) > clients.MAX_REDIRECT_URI or _CONTROL.search(uri):
            raise InvalidRedirectURIError("A redirect URI is too long or not printable.")
        try:
            clients.validate_native_or_https_redirect_uri(uri)
            if "@" in urlsplit(uri).netloc:
                # "https://app.example@evil.example/" names evil.example.
                raise clients.InvalidClientMetadata(f"redirect URI {uri!r} has user information")
        except ValueError as error:  # InvalidClientMetadata, or urlsplit's own
            raise InvalidRedirectURIError(_describable(str(error))) from None
    return uris


def _check_shapes(data: dict[str, Any]) -> None:
    """JSON types and sizes, before any value is used (no 500 on a number
    where a string belongs)."""
    for name in _STRINGS:
        if name not in data:
            continue
        value = data[name]
        if not isinstance(value, str):
            raise InvalidClientMetadataError(f"'{name}' must be a string.")
        if len(value) > MAX_METADATA_STRING:
            raise InvalidClientMetadataError(f"'{name}' is too long.")
        if _CONTROL.search(value):
            raise InvalidClientMetadataError(f"'{name}' contains control characters.")
    for name in _STRING_LISTS:
        if name not in data:
            continue
        values = data[name]
        if (
            not isinstance(values, list)
            or len(values) > MAX_METADATA_LIST
            or not all(isinstance(v, str) and len(v) <= MAX_METADATA_STRING for v in values)
        ):
            raise InvalidClientMetadataError(f"'{name}' must be a short list of strings.")
        if any(_CONTROL.search(v) for v in values):
            raise InvalidClientMetadataError(f"'{name}' contains control characters.")
    if "jwks" in data and not isinstance(data["jwks"], dict):
        raise InvalidClientMetadataError("'jwks' must be a JSON Web Key Set.")


class RegistrationEndpoint(ClientRegistrationEndpoint):
    server: BatonAuthorizationServer

    def __init__(self, server: BatonAuthorizationServer) -> None:
        super().__init__(server, claims_classes=[_ClientMetadataClaims])

    def authenticate_token(self, request: Any) -> bool:
        # Open registration when enabled (what MCP clients expect); the
        # operator's switch is the only credential.
        return self.server.settings.dcr

    def get_server_metadata(self) -> dict[str, Any]:
        return metadata(self.server.settings)

    def extract_client_metadata(self, request: Any) -> dict[str, Any]:
        data: dict[str, Any] = request.payload.data
        uris = _check_redirect_uris(data.get("redirect_uris"))
        _check_shapes(data)
        # authlib checks the values against this server's metadata: scopes,
        # grant types, response types and authentication methods it supports.
        client_metadata: dict[str, Any] = super().extract_client_metadata(request)
        client_metadata["redirect_uris"] = uris
        method = client_metadata.setdefault("token_endpoint_auth_method", "client_secret_basic")
        client_metadata.setdefault("grant_types", ["authorization_code"])
        client_metadata.setdefault("response_types", ["code"])
        if "authorization_code" not in client_metadata["grant_types"]:
            raise InvalidClientMetadataError("'grant_types' must include 'authorization_code'.")
        scope = client_metadata.get("scope") or " ".join(
            s for s in self.get_server_metadata()["scopes_supported"]
        )
        client_metadata["scope"] = scope
        client_metadata["client_name"] = str(client_metadata.get("client_name") or "").strip()
        if method not in {"none", "client_secret_basic", "client_secret_post"}:
            raise InvalidClientMetadataError("Unsupported 'token_endpoint_auth_method'.")
        return client_metadata

    def generate_client_info(self, request: Any) -> dict[str, Any]:
        # The identifier and secret come from save_client, which makes them.
        return {"client_secret_expires_at": 0}

    def save_client(
        self, client_info: dict[str, Any], client_metadata: dict[str, Any], request: Any
    ) -> clients.Registered:
        now = self.server.clock()
        name = client_metadata["client_name"] or "Unnamed application"
        try:
            registered = clients.register(
                db=self.server.db,
                name=name,
                redirect_uris=list(client_metadata["redirect_uris"]),
                public=client_metadata["token_endpoint_auth_method"] == PUBLIC_METHOD,
                first_party=False,
                scope=client_metadata["scope"],
                now=now,
                provenance=clients.DCR,
                grant_types=tuple(client_metadata["grant_types"]),
            )
        except clients.InvalidClientMetadata as error:
            raise InvalidClientMetadataError(str(error)) from None
        client_metadata["client_name"] = registered.client.name
        client_metadata["grant_types"] = list(registered.client.grant_types)
        audit.record(
            db=self.server.db,
            event="client.registered",
            now=now,
            client_id=registered.client.client_id,
            ip=getattr(request, "ip", None),
            request_id=getattr(request, "request_id", None),
            provenance=clients.DCR,
            public=registered.client.public,
        )
        return registered

    def generate_client_registration_info(
        self, client: clients.Registered, request: Any
    ) -> dict[str, Any]:
        info: dict[str, Any] = {
            "client_id": client.client.client_id,
            "client_id_issued_at": int(client.client.created_at.timestamp()),
            "client_name": client.client.name,
            "grant_types": list(client.client.grant_types),
        }
        if client.secret is not None:
            info["client_secret"] = client.secret
        return info


__all__ = ["AccessDeniedError", "RegistrationEndpoint"]
