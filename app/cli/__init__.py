"""The ``baton`` admin command. See ``baton --help``."""

from app.cli import auditing, clients, database, flows, keys, users  # noqa: F401  (registers commands)
from app.cli._base import main

__all__ = ["main"]
