"""Opaque secrets: generated with 256 bits of entropy, stored only as SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_secret() -> str:
    """256 random bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The stored form of a secret. A plain hash suffices: the input has 256 bits
    of entropy, so there is nothing to brute-force and no need for a slow hash."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)


def new_public_id() -> str:
    return secrets.token_hex(8)
