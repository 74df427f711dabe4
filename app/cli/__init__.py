"""The ``baton`` admin command. See ``baton --help``."""

from app.cli import clients, database, flows, users  # noqa: F401  (register the commands)
from app.cli._base import main

__all__ = ["main"]
