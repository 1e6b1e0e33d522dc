"""What every handler of the service uses, whichever part it serves (handlers.py, contacts/, quotes/): who asks
and whose records they may act on, the version checks of a change, new ids and timestamps. Kept apart from
handlers.py so that the lead conversion there can use contacts/ without contacts/ importing it back."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from services.opportunities.store import holders_of
from shared.errors import Forbidden, PreconditionFailed


@dataclass(frozen=True)
class Actor:
    """Who asks, and whose records they may act on (None: everyone's)."""

    user_id: str
    owners: frozenset[str] | None

    def check(self, owner_id: str | None, what: str) -> None:
        if self.owners is not None and owner_id not in self.owners:
            raise Forbidden(f"{what} belongs to {owner_id}, outside {self.user_id}'s scope")

    def check_reads(self, holders: Sequence[str], what: str) -> None:
        """Reading a deal takes any of its owners (the primary one or one holding a split) in scope."""
        if self.owners is not None and self.owners.isdisjoint(holders):
            raise Forbidden(f"{what} belongs to {', '.join(holders)}, outside {self.user_id}'s scope")

    def check_changes(self, row: asyncpg.Record, what: str) -> None:
        """Changing a deal takes its primary owner in scope; a co-owner (holding a split) only reads it."""
        if self.owners is None or row["owner_id"] in self.owners:
            return
        self.check_reads(holders_of(row), what)
        raise Forbidden(
            f"{what} belongs to {row['owner_id']}: {self.user_id} may read it (a split of it is in scope) but "
            "changes are made by its primary owner, that owner's manager, a director or an admin"
        )


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
