"""Wiring of the leads service."""

from pathlib import Path

from services.leads import campaign_api, importing
from services.leads.api import router
from services.leads.web_form import public
from shared.service import ServiceDefinition

service = ServiceDefinition(
    name="leads",
    routers=[importing.router, router, campaign_api.router, public],
    migrations=Path(__file__).parent / "migrations",
    handlers={},
)
