"""Wiring of the opportunities service."""

from pathlib import Path

from services.opportunities import handlers
from services.opportunities.api import accounts, contracts, opportunities, pipelines
from services.opportunities.contacts.api import account_contacts, contacts
from services.opportunities.quotes.api import quotes
from shared.service import ServiceDefinition

service = ServiceDefinition(
    name="opportunities",
    routers=(opportunities, pipelines, accounts, account_contacts, contacts, contracts, quotes),
    migrations=Path(__file__).parent / "migrations",
    handlers={"sales.lead.converted.v1": handlers.lead_converted, "sales.account.tiered.v1": handlers.account_tiered},
)
