"""HTTP for contacts: parse, authorise, call a handler, shape the answer."""

from typing import Any

import asyncpg
from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from services.opportunities.api import CurrentActor, IfMatch, _after, _answer, _expected_version, _next_cursor
from services.opportunities.contacts import handlers
from services.opportunities.contacts.domain import BuyingRole
from shared.pagination import Page, clamp_limit
from shared.service import ServiceDatabase
from shared.web import CurrentPrincipal

# An account's contacts are among the account's operations (tag accounts), a contact by id among its own.
account_contacts = APIRouter(prefix="/v1/accounts", tags=["accounts"])
contacts = APIRouter(prefix="/v1/contacts", tags=["contacts"])


class ContactFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=200, description="Job title, e.g. 采购经理")
    role: BuyingRole | None = Field(None, description="The part the person plays in the purchase")
    phone: str | None = Field(None, max_length=40, description="Stored in E.164; a number without a country "
                                                               "code is read as Chinese")
    email: str | None = Field(None, max_length=254, description="Stored lower-cased")


class ContactIn(ContactFields):
    name: str = Field(min_length=1, max_length=200)
    is_primary: bool = Field(False, description="The account's primary contact (the former one stops being it)")


class ContactChange(ContactFields):
    """The fields to change; those absent stay as they are (title, role, phone and e-mail may be cleared with
    null)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    is_primary: bool | None = None
    version: int | None = None


def contact_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], **handlers.contact_fields(row)} | {
        name: row[name] for name in ("version", "created_by", "created_at", "updated_by", "updated_at", "archived_by",
                                     "archived_at")}


@account_contacts.post("/{account_id}/contacts", status_code=201)
async def create_contact(
    account_id: str, body: ContactIn, actor: CurrentActor, db: ServiceDatabase, response: Response
) -> dict[str, Any]:
    """Add a contact to the account (the account owner's scope, as changing the account); 409 naming the
    contact of the account that has the phone or e-mail already."""
    row = await handlers.create_contact(db, actor, account_id, body.model_dump())
    response.headers["Location"] = f"/v1/contacts/{row['id']}"
    return _answer(row, response, contact_json)


@account_contacts.get("/{account_id}/contacts")
async def list_contacts(
    account_id: str, _: CurrentPrincipal, db: ServiceDatabase, cursor: str | None = None, limit: int | None = None,
) -> Page[dict[str, Any]]:
    """The account's contacts (not the archived ones), oldest first; `next_cursor` pages on. Readable by
    every role, as the account is."""
    size = clamp_limit(limit)
    rows = await handlers.list_contacts(db, account_id, after=_after(cursor), limit=size)
    return Page(items=[contact_json(r) for r in rows], next_cursor=_next_cursor(rows, size))


@contacts.get("/{contact_id}")
async def get_contact(contact_id: str, _: CurrentPrincipal, db: ServiceDatabase, response: Response
                      ) -> dict[str, Any]:
    """A contact, archived ones included (`archived_at` set); the ETag is its version, for If-Match."""
    return _answer(await handlers.get_contact(db, contact_id), response, contact_json)


@contacts.patch("/{contact_id}")
async def update_contact(
    contact_id: str, body: ContactChange, actor: CurrentActor, db: ServiceDatabase, response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Change the fields given; a stale If-Match or version gets 412, an archived contact 409, a phone or
    e-mail another contact of the account has 409 naming it."""
    expected = _expected_version(if_match, body.version)
    values = body.model_dump(exclude_unset=True, exclude={"version"})
    return _answer(await handlers.update_contact(db, actor, contact_id, values, expected), response, contact_json)


@contacts.delete("/{contact_id}", status_code=204)
async def archive_contact(
    contact_id: str, actor: CurrentActor, db: ServiceDatabase, if_match: IfMatch = None
) -> Response:
    """Archive the contact: gone from the account's list, still readable for the deals that named it. 409
    while open or suspended opportunities name it (how many, and which); a stale If-Match gets 412."""
    await handlers.archive_contact(db, actor, contact_id, _expected_version(if_match, None))
    return Response(status_code=204)
