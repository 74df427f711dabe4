"""Bugs the interop tests found (now fixed), each with the exception its test
raises should it come back, so that a failure names the bug."""

from __future__ import annotations


class DcrClientNotPersisted(AssertionError):
    """POST /oauth2/register answered 201 with a client_id that was not stored."""


class PublicIntrospectionRefused(AssertionError):
    """A public client's introspection request was refused despite 'none'."""
