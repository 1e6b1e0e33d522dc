"""Contact commands: load, apply the rules of contacts/domain.py, save and publish in one transaction. The
opportunities' handlers (handlers.py) use this module for a deal naming a contact and a converted lead's person;
it does not import them back."""

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.opportunities import store as opportunity_store
from services.opportunities.contacts import store
from services.opportunities.contacts.domain import Contact, known_contact
from services.opportunities.handling import Actor, _new_id, _now, _ts, changed_meanwhile, check_version
from shared.contact_details import InvalidContact, normalise_email, normalise_phone
from shared.db import Database, Transaction
from shared.errors import NotFound, Unprocessable

# How many of the open deals naming a contact a refused archiving lists (it says how many there are).
DEALS_LISTED = 5


def contact_fields(row: asyncpg.Record) -> dict[str, Any]:
    """A contact's state, as its answers and its events show it (beside its id)."""
    return {name: row[name] for name in ("account_id", "name", "title", "role", "phone", "email", "is_primary",
                                         "lead_id")}


def _contact_data(row: asyncpg.Record) -> dict[str, Any]:
    return {"contact_id": row["id"], **contact_fields(row)}


def _publish_contact_created(tx: Transaction, row: asyncpg.Record) -> None:
    data = _contact_data(row) | {"created_by": row["created_by"], "created_at": _ts(row["created_at"])}
    tx.publish("sales.contact.created.v1", row["id"], data, sequence=row["version"])


def _publish_contact_updated(tx: Transaction, row: asyncpg.Record, changed: Sequence[str]) -> None:
    data = _contact_data(row) | {"changed_fields": sorted(changed), "updated_by": row["updated_by"],
                                 "updated_at": _ts(row["updated_at"])}
    tx.publish("sales.contact.updated.v1", row["id"], data, sequence=row["version"])


async def _account_for_contacts(tx: Transaction, actor: Actor, account_id: str) -> list[Contact]:
    """Lock the account (its contacts' duplicate and primary rules are checked one change at a time), check
    the caller may change it (as changing the account: its owner's scope; anyone for an account without an
    owner), and read its current contacts."""
    account = await opportunity_store.account(tx.conn, account_id, for_update=True)
    if account is None:
        raise NotFound(f"no account {account_id}")
    if account["owner_id"] is not None:
        actor.check(account["owner_id"], f"account {account_id}")
    return [store.to_contact(r) for r in await store.current_contacts(tx.conn, account_id)]


async def _demote_primary(tx: Transaction, actor: Actor, contact: Contact, others: list[Contact], now: datetime
                          ) -> None:
    """The account's former primary contact is no longer primary once `contact` is (published as its update)."""
    former = contact.primary_to_demote(others)
    if former is None:
        return
    demoted = await store.update_contact(tx.conn, former.id, former.version, is_primary=False,
                                         updated_by=actor.user_id, updated_at=now)
    assert demoted is not None  # the account is locked: its contacts change one request at a time
    _publish_contact_updated(tx, demoted, ["is_primary"])


async def create_contact(db: Database, actor: Actor, account_id: str, values: dict[str, Any]) -> asyncpg.Record:
    """A contact of the account; 409 naming the contact that has its phone or e-mail already. A new primary
    contact replaces the former one as primary."""
    async with db.transaction() as tx:
        others = await _account_for_contacts(tx, actor, account_id)
        contact = Contact.new(_new_id("con"), account_id, values)
        contact.check_unique_in_account(others)
        now = _now()
        await _demote_primary(tx, actor, contact, others, now)
        row = await store.insert_contact(
            tx.conn, id=contact.id, account_id=account_id, name=contact.name, title=contact.title,
            role=contact.role, phone=contact.phone, email=contact.email, is_primary=contact.is_primary,
            created_by=actor.user_id, created_at=now,
        )
        assert row is not None  # no lead_id, so no conflict
        _publish_contact_created(tx, row)
        return row


async def get_contact(db: Database, contact_id: str) -> asyncpg.Record:
    """Any caller reads any contact, archived ones included (closed deals name them), as any account."""
    async with db.statements() as conn:
        row = await store.contact(conn, contact_id)
    if row is None:
        raise NotFound(f"no contact {contact_id}")
    return row


async def list_contacts(
    db: Database, account_id: str, *, after: tuple[datetime, str] | None, limit: int
) -> list[asyncpg.Record]:
    async with db.statements() as conn:
        if await opportunity_store.account(conn, account_id) is None:
            raise NotFound(f"no account {account_id}")
        return await store.list_contacts(conn, account_id, after=after, limit=limit)


async def _contact_to_change(
    tx: Transaction, actor: Actor, contact_id: str, expected_version: int | None
) -> tuple[Contact, list[Contact]]:
    """The contact (404), its account's other current contacts, once the caller is found to be allowed and
    the version is the one expected (412)."""
    row = await store.contact(tx.conn, contact_id)
    if row is None:
        raise NotFound(f"no contact {contact_id}")
    others = await _account_for_contacts(tx, actor, row["account_id"])
    contact = next((c for c in others if c.id == contact_id), None) or store.to_contact(row)
    check_version(f"contact {contact_id}", contact.version, expected_version)
    return contact, others


async def update_contact(
    db: Database, actor: Actor, contact_id: str, values: dict[str, Any], expected_version: int | None
) -> asyncpg.Record:
    """Change the fields given; publishes sales.contact.updated.v1 with the changed fields. A request that
    changes nothing answers the contact as it is (no new version, no event)."""
    async with db.transaction() as tx:
        contact, others = await _contact_to_change(tx, actor, contact_id, expected_version)
        edited, changes = contact.edit(values)
        if not changes:
            row = await store.contact(tx.conn, contact_id)
            assert row is not None
            return row
        edited.check_unique_in_account(others)
        now = _now()
        await _demote_primary(tx, actor, edited, others, now)
        saved = await store.update_contact(tx.conn, contact_id, contact.version, **changes,
                                           updated_by=actor.user_id, updated_at=now)
        if saved is None:
            raise changed_meanwhile(f"contact {contact_id}")
        _publish_contact_updated(tx, saved, list(changes))
        return saved


async def archive_contact(db: Database, actor: Actor, contact_id: str, expected_version: int | None) -> None:
    """Archive the contact (DELETE): refused (409) while open or suspended opportunities name it. It stays
    readable, for the closed deals that name it; an archived contact answers as done (no second event)."""
    async with db.transaction() as tx:
        contact, _ = await _contact_to_change(tx, actor, contact_id, expected_version)
        if contact.archived:
            return
        open_deals, open_deal_count = await store.open_deals_naming(tx.conn, contact_id, listed=DEALS_LISTED)
        contact.archive(open_deals, open_deal_count)
        now = _now()
        saved = await store.update_contact(tx.conn, contact_id, contact.version, is_primary=False,
                                           archived_by=actor.user_id, archived_at=now)
        if saved is None:
            raise changed_meanwhile(f"contact {contact_id}")
        tx.publish("sales.contact.archived.v1", contact_id, {
            "contact_id": contact_id, "account_id": saved["account_id"], "name": saved["name"],
            "archived_by": actor.user_id, "archived_at": _ts(now),
        }, sequence=saved["version"])


# --- contacts as opportunities meet them: a deal naming one, a converted lead's person -----------


async def check_contact_of(tx: Transaction, contact_id: str, account_id: str) -> None:
    """422 unless the contact is a current (not archived) contact of the account. The account's lock waits
    for an archiving of its contacts in progress, which then sees this deal (or this sees it archived)."""
    await opportunity_store.account(tx.conn, account_id, for_update=True)
    contact = await store.contact(tx.conn, contact_id)
    if contact is None or contact["account_id"] != account_id or contact["archived_at"] is not None:
        raise Unprocessable(f"contact_id: {contact_id} is not a current contact of account {account_id}; "
                            f"GET /v1/accounts/{account_id}/contacts lists them")


def _as_stored(normalise: Callable[[str], str], given: str | None) -> str | None:
    """A converted lead's phone or e-mail as contacts keep them (E.164, lower-case), or as sent when it cannot
    be normalised: the leads service sends them normalised already, and a conversion is never lost for it."""
    if not given:
        return None
    try:
        return normalise(given)
    except InvalidContact:
        return given


async def contact_of_converted_lead(
    tx: Transaction, account_id: str, person: dict[str, Any], lead_id: str, converted_by: str
) -> str | None:
    """The account's contact the lead's person is: the current one with the same phone or e-mail (the account
    knows them already, no second contact), else a new one (announced). None when the lead's contact was
    created by an earlier event for this lead (an opportunity follows only once anyway)."""
    phone, email = _as_stored(normalise_phone, person.get("phone")), _as_stored(normalise_email, person.get("email"))
    await opportunity_store.account(tx.conn, account_id, for_update=True)  # as the contacts API: one change at a time
    known = known_contact([store.to_contact(r) for r in await store.current_contacts(tx.conn, account_id)],
                          phone, email)
    if known is not None:
        return known.id
    contact = await store.insert_contact(
        tx.conn, id=_new_id("con"), account_id=account_id, name=person["name"], phone=phone, email=email,
        lead_id=lead_id, created_by=converted_by, created_at=_now(),
    )
    if contact is None:
        return None
    _publish_contact_created(tx, contact)
    return str(contact["id"])
