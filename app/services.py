"""What a running Baton holds: built once in the lifespan, shared by requests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from app.db import Database
from app.health import Readiness
from app.metrics import Metrics
from app.oauth.server import BatonAuthorizationServer
from app.passwords import HashingPool
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    database: Database
    hashing: HashingPool
    oauth: BatonAuthorizationServer
    clock: Callable[[], datetime]
    metrics: Metrics
    readiness: Readiness
