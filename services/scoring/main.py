"""Wiring of the scoring service."""

from pathlib import Path

from services.scoring.api import ROUTERS
from services.scoring.handlers import HANDLERS
from shared.service import ServiceDefinition

service = ServiceDefinition(
    name="scoring",
    routers=ROUTERS,
    migrations=Path(__file__).parent / "migrations",
    handlers=HANDLERS,
)
