"""The JSON API under ``/api/v1`` (RFC 7807 errors)."""
