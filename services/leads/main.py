"""Wiring of the leads service."""

from pathlib import Path

from services.leads.api import router
from shared.service import ServiceDefinition

service = ServiceDefinition(
    name="leads",
    routers=[router],
    migrations=Path(__file__).parent / "migrations",
    handlers={},
)
