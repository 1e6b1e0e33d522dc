"""Wiring of the forecasting service."""

from pathlib import Path

from services.forecasting import restating
from services.forecasting.api import ROUTERS
from services.forecasting.handlers import HANDLERS
from shared.service import ServiceDefinition

service = ServiceDefinition(
    name="forecasting",
    routers=[restating.lifecycle, *ROUTERS],
    migrations=Path(__file__).parent / "migrations",
    handlers=HANDLERS,
)
