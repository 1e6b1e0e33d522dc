"""Wiring of the leads service."""

from pathlib import Path

from services.leads import campaign_api, importing, overdue
from services.leads.api import router
from services.leads.web_form import public
from shared.service import ServiceDefinition

service = ServiceDefinition(
    name="leads",
    routers=[overdue.lifecycle, importing.router, router, campaign_api.router, public],
    migrations=Path(__file__).parent / "migrations",
    handlers={},
)
