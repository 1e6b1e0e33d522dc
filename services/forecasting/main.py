"""Wiring of the forecasting service."""

from pathlib import Path

from services.forecasting.api import ROUTERS
from services.forecasting.handlers import HANDLERS
from shared.service import ServiceDefinition

service = ServiceDefinition(
    name="forecasting",
    routers=ROUTERS,
    migrations=Path(__file__).parent / "migrations",
    handlers=HANDLERS,
)
