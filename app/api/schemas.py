"""Request bodies, validated by pydantic; its error locations become RFC 6901 pointers."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from annotated_types import Len
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, field_validator

from app import problems
from app.problems import InvalidField

_M = TypeVar("_M", bound=BaseModel)
_Username = Annotated[str, StringConstraints(min_length=1, max_length=255)]
# Long enough for any passphrase, short enough that hashing it is not a DoS lever.
_Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
_Token = Annotated[str, StringConstraints(max_length=512)]


class LoginRequest(BaseModel):
    # Unknown fields are ignored, as the contract allows additional properties.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    username: _Username
    password: _Password
    redirection_token: _Token | None = None

    @field_validator("redirection_token", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Absent is fine; an explicit null is a wrong type, as in the contract.
        if value is None:
            raise ValueError("must be a string")
        return value


class ConsentDecision(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    redirection_token: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    approve: bool
    # The subset of the requested scopes the user approves; all when absent.
    scopes: (
        Annotated[list[Annotated[str, StringConstraints(max_length=255)]], Len(max_length=64)]
        | None
    ) = None


_TITLES = {
    "missing": "This field is required.",
    "string_too_short": "This field must not be empty.",
    "string_too_long": "This value is too long.",
    "string_type": "This value must be a string.",
    "bool_type": "This value must be true or false.",
    "list_type": "This value must be an array.",
}


def parse(model: type[_M], body: bytes) -> _M:
    """Validate a JSON body or raise a ``400 validation_error`` problem."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise _problem(error) from None


def _problem(error: ValidationError) -> problems.Problem:
    fields = []
    for item in error.errors(include_url=False):
        location = tuple(item["loc"])
        kind = item["type"]
        if kind == "json_invalid":
            return problems.validation_error("The request body is not valid JSON.")
        if not location:
            return problems.validation_error("The request body must be a JSON object.")
        fields.append(
            InvalidField(
                name=str(location[-1]) if location else "",
                error="invalid_value",
                title=_TITLES.get(kind, item["msg"]),
                pointer=problems.json_pointer(location),
            )
        )
    return problems.validation_error("The request is invalid.", *fields)
