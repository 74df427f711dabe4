"""Authorization server metadata (RFC 8414) and OpenID Provider metadata
(OpenID Connect Discovery 1.0 §3), generated from the settings, so that the
document never advertises what this server has switched off."""

from __future__ import annotations

from typing import Any

from app.authorizations import SCOPE_DESCRIPTIONS
from app.settings import Settings

# Every claim an ID token or the userinfo endpoint may carry (grants.py).
CLAIMS = [
    "sub",
    "iss",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "at_hash",
    "amr",
    "preferred_username",
]
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


def metadata(settings: Settings) -> dict[str, Any]:
    issuer = settings.public_url
    document: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": issuer + "/oauth2/authorize",
        "token_endpoint": issuer + "/oauth2/token",
        "revocation_endpoint": issuer + "/oauth2/revoke",
        "introspection_endpoint": issuer + "/oauth2/introspect",
        "userinfo_endpoint": issuer + "/oauth2/userinfo",
        "jwks_uri": issuer + "/oauth2/jwks",
        "scopes_supported": sorted(SCOPE_DESCRIPTIONS),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": (
            [*CLIENT_AUTH_METHODS[:2], "none"]
            if settings.unauthenticated_introspection
            else CLIENT_AUTH_METHODS[:2]
        ),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [settings.signing_alg],
        "claims_supported": CLAIMS,
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "authorization_response_iss_parameter_supported": True,
        "resource_indicators_supported": True,
    }
    if settings.dcr:
        document["registration_endpoint"] = issuer + "/oauth2/register"
    return document
