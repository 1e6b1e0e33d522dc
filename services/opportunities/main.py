"""Wiring of the opportunities service."""

from pathlib import Path

from services.opportunities import handlers
from services.opportunities.api import ROUTERS
from services.opportunities.quotes.api import quotes
from shared.service import ServiceDefinition

service = ServiceDefinition(
    name="opportunities",
    routers=(*ROUTERS, quotes),
    migrations=Path(__file__).parent / "migrations",
    handlers={"sales.lead.converted.v1": handlers.lead_converted, "sales.account.tiered.v1": handlers.account_tiered},
)
