"""asyncpg queries for the quotes table (its migration is migrations/0005_quotes.sql of the service)."""

from datetime import datetime
from typing import Any

from services.opportunities.store import Conn, Row, _keyset, split_held_in_scope


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


async def list_quotes(
    conn: Conn, *, owners: set[str] | None, opportunity_id: str | None, status: str | None,
    approver_id: str | None, after: tuple[datetime, str] | None, limit: int,
) -> list[Row]:
    clauses, args = _keyset(after)

    def add(condition: str, value: Any) -> None:
        args.append(value)
        clauses.append(condition.replace("?", f"${len(args)}"))

    if owners is not None:  # check_part_reads' rule: the quote's owner or an owner of its deal in scope
        add("(owner_id = ANY(?::text[])"  # noqa: S608 - the SQL is ours
            " OR opportunity_id IN (SELECT id FROM opportunities WHERE owner_id = ANY(?::text[]))"
            f" OR {split_held_in_scope('opportunity_id', '?')})", sorted(owners))
    if opportunity_id is not None:
        add("opportunity_id = ?", opportunity_id)
    if status is not None:
        add("status = ?", status)
    if approver_id is not None:
        add("approver_id = ?", approver_id)
    condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    args.append(limit)
    return await conn.fetch(
        f"SELECT * FROM quotes {condition} ORDER BY created_at, id LIMIT ${len(args)}",  # noqa: S608
        *args,
    )
