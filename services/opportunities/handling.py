"""What every handler of the service uses, whichever part it serves (handlers.py, contacts/, quotes/): who asks
and whose records they may act on, the version checks of a change, new ids and timestamps. Kept apart from
handlers.py so that the lead conversion there can use contacts/ without contacts/ importing it back."""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg

from services.opportunities.store import Conn, holders_of, list_deal_parts, opportunity
from shared.db import Database
from shared.errors import Forbidden, PreconditionFailed


@dataclass(frozen=True)
class Actor:
    """Who asks, and whose records they may act on (None: everyone's)."""

    user_id: str
    owners: frozenset[str] | None

    def covers(self, owner_id: str | None) -> bool:
        return self.owners is None or owner_id in self.owners

    def check(self, owner_id: str | None, what: str) -> None:
        if not self.covers(owner_id):
            raise Forbidden(f"{what} belongs to {owner_id}, outside {self.user_id}'s scope")

    def check_reads(self, holders: Sequence[str], what: str) -> None:
        """Reading a deal takes any of its owners (the primary one or one holding a split) in scope."""
        if self.owners is not None and self.owners.isdisjoint(holders):
            raise Forbidden(f"{what} belongs to {', '.join(holders)}, outside {self.user_id}'s scope")

    def check_changes(self, row: asyncpg.Record, what: str) -> None:
        """Changing a deal takes its primary owner in scope; a co-owner (holding a split) only reads it."""
        self.check_changes_of(row["owner_id"], holders_of(row), what)

    def check_changes_of(self, owner_id: str, readers: Sequence[str], what: str) -> None:
        """Changing a deal, or its quote or contract, takes `owner_id` in scope; a caller whose scope holds one
        of the `readers` only is told that they may read it."""
        if self.covers(owner_id):
            return
        self.check_reads(readers, what)
        raise Forbidden(
            f"{what} belongs to {owner_id}: {self.user_id} may read it (an owner of the deal is in scope) but "
            "changes are made by its primary owner, that owner's manager, a director or an admin"
        )

    async def check_part_reads(self, conn: Conn, part: asyncpg.Record, what: str) -> None:
        """A quote or contract is read by its owner's scope and by the scopes that may read its deal: a
        co-owner holding a split of it, and that co-owner's manager. The deal is loaded only past the owner's
        scope."""
        if not self.covers(part["owner_id"]):
            self.check_reads(await _readers_of_part(conn, part), what)

    async def check_part_changes(self, conn: Conn, part: asyncpg.Record, what: str) -> None:
        """A quote or contract is changed by its owner's scope only; a co-owner of its deal is told that they
        may read it, as for the deal itself."""
        if not self.covers(part["owner_id"]):
            self.check_changes_of(part["owner_id"], await _readers_of_part(conn, part), what)


async def _readers_of_part(conn: Conn, part: asyncpg.Record) -> list[str]:
    """Who may read a deal's quote or contract: its owner (the deal's primary owner when it was drawn up)
    and whoever may read the deal now (its primary owner and the co-owners holding a split)."""
    deal = await opportunity(conn, part["opportunity_id"])
    assert deal is not None  # a quote's or contract's opportunity_id is a foreign key
    return [part["owner_id"], *holders_of(deal)]


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


def check_version(what: str, current: int, expected: int | None) -> None:
    """412 when the caller's change was based on another version than the stored one (None: not checked)."""
    if expected is not None and expected != current:
        raise PreconditionFailed(
            f"{what} is at version {current}, not {expected}: reload it and apply your change again"
        )


def changed_meanwhile(what: str) -> PreconditionFailed:
    """The UPDATE ... WHERE version = $n found the version moved: another writer got there first."""
    return PreconditionFailed(f"{what} was changed by someone else at the same time: reload it and retry")


async def list_parts(
    db: Database, actor: Actor, table: Literal["quotes", "contracts"], *, equal: Mapping[str, Any],
    after: tuple[datetime, str] | None, limit: int,
) -> list[asyncpg.Record]:
    """A page of the quotes or contracts the actor may read (check_part_reads' rule), `equal` filtering."""
    async with db.statements() as conn:
        return await list_deal_parts(conn, table, owners=None if actor.owners is None else set(actor.owners),
                                     equal=equal, after=after, limit=limit)
