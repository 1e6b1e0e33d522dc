"""asyncpg queries for the quotes table (its migration is migrations/0005_quotes.sql of the service)."""

from typing import Any

from services.opportunities.store import Conn, Row


async def insert_quote(conn: Conn, **fields: Any) -> Row:
    columns = ", ".join(fields)
    placeholders = ", ".join(f"${i}" for i in range(1, len(fields) + 1))
    row = await conn.fetchrow(
        f"INSERT INTO quotes ({columns}) VALUES ({placeholders}) RETURNING *",  # noqa: S608 - column names are ours
        *fields.values(),
    )
    assert row is not None
    return row


async def quote(conn: Conn, quote_id: str) -> Row | None:
    return await conn.fetchrow("SELECT * FROM quotes WHERE id = $1", quote_id)


async def save_quote(conn: Conn, quote_id: str, expected_version: int, events: int, **fields: Any) -> Row | None:
    """Change the quote if it is still at `expected_version`, adding one version per event published;
    None if someone changed it meanwhile (the check is in the UPDATE itself)."""
    sets = [f"{column} = ${i}" for i, column in enumerate(fields, start=4)]
    return await conn.fetchrow(
        f"UPDATE quotes SET {', '.join(sets + ['version = version + $3', 'updated_at = now()'])}"  # noqa: S608
        " WHERE id = $1 AND version = $2 RETURNING *",
        quote_id, expected_version, events, *fields.values(),
    )

