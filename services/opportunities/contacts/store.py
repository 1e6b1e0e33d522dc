"""asyncpg queries for the contacts table (migrations/0001_accounts_opportunities_contracts.sql of the
service creates it, 0010_contacts.sql gives it what the contacts API keeps)."""

from datetime import datetime
from typing import Any

from services.opportunities.contacts.domain import BuyingRole, Contact
from services.opportunities.store import Conn, Row, _keyset


async def insert_contact(conn: Conn, **fields: Any) -> Row | None:
    """The new contact, or None when the lead's contact exists already."""
    columns = ", ".join(fields)
    placeholders = ", ".join(f"${i}" for i in range(1, len(fields) + 1))
    return await conn.fetchrow(
        f"INSERT INTO contacts ({columns}) VALUES ({placeholders})"  # noqa: S608
        " ON CONFLICT (lead_id) DO NOTHING RETURNING *",
        *fields.values(),
    )


def to_contact(row: Row) -> Contact:
    return Contact(
        id=row["id"], account_id=row["account_id"], name=row["name"], title=row["title"],
        role=None if row["role"] is None else BuyingRole(row["role"]), phone=row["phone"], email=row["email"],
        is_primary=row["is_primary"], archived=row["archived_at"] is not None, version=row["version"],
    )


async def contact(conn: Conn, contact_id: str) -> Row | None:
    return await conn.fetchrow("SELECT * FROM contacts WHERE id = $1", contact_id)


async def current_contacts(conn: Conn, account_id: str) -> list[Row]:
    """The account's contacts that are not archived (a handful: the duplicate and primary rules read them all)."""
    return await conn.fetch(
        "SELECT * FROM contacts WHERE account_id = $1 AND archived_at IS NULL ORDER BY created_at, id", account_id)


async def list_contacts(conn: Conn, account_id: str, *, after: tuple[datetime, str] | None, limit: int) -> list[Row]:
    """A page of the account's contacts that are not archived, oldest first."""
    clauses, args = _keyset(after)
    args.append(account_id)
    clauses += [f"account_id = ${len(args)}", "archived_at IS NULL"]
    args.append(limit)
    return await conn.fetch(
        f"SELECT * FROM contacts WHERE {' AND '.join(clauses)} ORDER BY created_at, id LIMIT ${len(args)}",  # noqa: S608
        *args,
    )


async def update_contact(conn: Conn, contact_id: str, expected_version: int, **fields: Any) -> Row | None:
    """Change the contact if it is still at `expected_version` (its version goes up by one); None if someone
    changed it meanwhile."""
    sets = [f"{column} = ${i}" for i, column in enumerate(fields, start=3)]
    return await conn.fetchrow(
        f"UPDATE contacts SET {', '.join(sets + ['version = version + 1'])}"  # noqa: S608 - column names are ours
        " WHERE id = $1 AND version = $2 RETURNING *",
        contact_id, expected_version, *fields.values(),
    )


async def open_deals_naming(conn: Conn, contact_id: str, *, listed: int) -> tuple[list[str], int]:
    """The first `listed` open or suspended opportunities naming the contact (ids, oldest first) and how
    many there are."""
    rows = await conn.fetch(
        "SELECT id, count(*) OVER () AS deals FROM opportunities"
        " WHERE contact_id = $1 AND status IN ('open', 'suspended') ORDER BY created_at, id LIMIT $2",
        contact_id, listed,
    )
    return [r["id"] for r in rows], rows[0]["deals"] if rows else 0
