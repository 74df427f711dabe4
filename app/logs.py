"""Logging: text lines or one JSON object per line (``BATON_LOG_FORMAT``), the
request id of the current request, and the logging setup ``baton serve``
hands to uvicorn (which applies it in every worker process)."""

from __future__ import annotations

import copy
import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# Set by RequestIdMiddleware for the duration of a request. anyio copies the
# context into worker threads, so code run by ``to_thread`` sees it too.
current_request_id: ContextVar[str | None] = ContextVar("baton_request_id", default=None)

# Polled by machines every few seconds: a successful answer is logged at DEBUG
# so that it does not drown the access log; failures stay at INFO.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def access_level(path: str, status: int) -> int:
    return logging.DEBUG if path in QUIET_PATHS and status < 400 else logging.INFO


# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12+
    "color_message",  # uvicorn's coloured copy of the message
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``,
    ``request_id`` when there is one, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or current_request_id.get()
        if request_id:
            entry["request_id"] = request_id
        if record.name == "baton.audit":
            # audit.record writes its event as a JSON document (the text
            # format's JSON lines); nest it rather than quote it.
            try:
                event = json.loads(entry["message"])
            except ValueError:
                event = None
            if isinstance(event, dict):
                entry["message"] = str(event.get("event", ""))
                entry["audit"] = event
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def config(settings: Settings) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document: uvicorn's own setup, plus the
    root logger (Baton's loggers) on stderr. In JSON mode uvicorn's lines are
    JSON too."""
    from uvicorn.config import LOGGING_CONFIG

    document: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    formatters = document["formatters"]
    if settings.log_format == "json":
        for name in ("baton", "default", "access"):
            formatters[name] = {"()": "app.logs.JsonFormatter"}
    else:
        formatters["baton"] = {"format": TEXT_FORMAT}
    document["handlers"]["baton"] = {
        "class": "logging.StreamHandler",
        "formatter": "baton",
        "stream": "ext://sys.stderr",
    }
    document["root"] = {"handlers": ["baton"], "level": settings.log_level.upper()}
    # authlib logs every issued token at DEBUG ("Issue token %r to %r"):
    # BATON_LOG_LEVEL=debug must not write access and refresh tokens to the log.
    document["loggers"]["authlib"] = {"level": "INFO"}
    # Reading the migrations for /readyz makes alembic announce its plugins.
    document["loggers"]["alembic"] = {"level": "WARNING"}
    return document
