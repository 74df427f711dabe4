"""Dynamic client registration (RFC 7591), for MCP clients and other tools
that register themselves. Off unless ``BATON_DCR=true``; what registers here is
never first-party, so its users are always asked for consent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import AccessDeniedError
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint, InvalidRedirectURIError
from authlib.oauth2.rfc7591.errors import InvalidClientMetadataError

from app import audit, clients
from app.oauth.discovery import metadata

if TYPE_CHECKING:
    from app.oauth.server import BatonAuthorizationServer

MAX_METADATA_STRING = 2000
PUBLIC_METHOD = "none"  # token_endpoint_auth_method of a client without a secret


class RegistrationEndpoint(ClientRegistrationEndpoint):
    server: BatonAuthorizationServer

    def authenticate_token(self, request: Any) -> bool:
        # Open registration when enabled (what MCP clients expect); the
        # operator's switch is the only credential.
        return self.server.settings.dcr

    def get_server_metadata(self) -> dict[str, Any]:
        return metadata(self.server.settings)

    def extract_client_metadata(self, request: Any) -> dict[str, Any]:
        client_metadata: dict[str, Any] = super().extract_client_metadata(request)
        for name, value in client_metadata.items():
            if isinstance(value, str) and len(value) > MAX_METADATA_STRING:
                raise InvalidClientMetadataError(f"'{name}' is too long.")
        uris = client_metadata.get("redirect_uris")
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            raise InvalidRedirectURIError("'redirect_uris' must be a non-empty list of URIs.")
        for uri in uris:
            try:
                clients.validate_native_or_https_redirect_uri(uri)
            except clients.InvalidClientMetadata as error:
                raise InvalidRedirectURIError(str(error)) from None
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
                provenance="dcr",
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
            provenance="dcr",
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
