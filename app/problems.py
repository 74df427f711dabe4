"""Baton's own errors and their RFC 7807 rendering for ``/api/v1``.

Domain code raises these; one exception handler turns them into the Lenses HQ
``hq_Error`` document. Routes never build error responses themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class InvalidField:
    name: str
    error: str  # hq_FieldErrorType: reference_not_found | not_unique | invalid_value | other_error
    title: str
    pointer: str

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "error": self.error,
            "title": self.title,
            "pointer": self.pointer,
        }


@dataclass(eq=False)
class Problem(Exception):
    status: int
    type: str  # hq_ErrorType
    title: str
    invalid_fields: list[InvalidField] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.invalid_fields:
            body["invalid_fields"] = [f.as_dict() for f in self.invalid_fields]
        if request_id:
            body["request_id"] = request_id
        return body


def validation_error(title: str, *fields: InvalidField) -> Problem:
    return Problem(400, "validation_error", title, list(fields))


def unauthorised(title: str = "Invalid username or password.") -> Problem:
    return Problem(401, "unauthorised", title)


def flow_not_found() -> Problem:
    return validation_error(
        "The sign-in link has expired or was already used.",
        InvalidField(
            name="redirection_token",
            error="reference_not_found",
            title="The redirection token is unknown, expired, revoked or already used.",
            pointer="/redirection_token",
        ),
    )


def throttled(retry_after: int) -> Problem:
    # The contract's hq_ErrorType has no rate-limit type; "forbidden" says
    # "not allowed right now" without suggesting the credentials were wrong.
    return Problem(
        429,
        "forbidden",
        "Too many failed sign-in attempts. Wait a moment and try again.",
        headers={"Retry-After": str(retry_after)},
    )


def overloaded(retry_after: int) -> Problem:
    return Problem(
        503,
        "unspecified",
        "The server is busy checking other passwords.",
        headers={"Retry-After": str(retry_after)},
    )


def json_pointer(location: tuple[int | str, ...]) -> str:
    """RFC 6901: ``("a", 0, "b/c")`` → ``/a/0/b~1c``."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in location)
