"""The organisation: users, roles, teams, managers, regions and quotas.

Reference data every service needs. It is one TOML file (format in docs/organisation.md);
in production it comes from the identity system as a config map.
"""

import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

SAMPLE_ORG_FILE = Path(__file__).parent / "sample.toml"


class Role(StrEnum):
    REP = "rep"
    MANAGER = "manager"
    DIRECTOR = "director"
    ADMIN = "admin"
    INTEGRATION = "integration"


@dataclass(frozen=True)
class User:
    id: str
    name: str
    role: Role
    team: str | None = None
    region: str | None = None
    manager: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class Team:
    id: str
    name: str
    region: str
    manager: str | None = None


@dataclass(frozen=True)
class Quota:
    user: str
    period: str
    amount: Decimal
    currency: str = "CNY"


class OrgFileError(ValueError):
    pass


@dataclass
class Organisation:
    users: dict[str, User]
    teams: dict[str, Team]
    quotas: list[Quota] = field(default_factory=list)

    def user(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    def members(self, team_id: str) -> list[User]:
        """The team's reps, in file order (the round-robin order)."""
        return [u for u in self.users.values() if u.team == team_id and u.role is Role.REP]

    def team_of(self, user_id: str) -> str | None:
        user = self.users.get(user_id)
        return user.team if user else None

    def manager_of(self, user_id: str) -> str | None:
        user = self.users.get(user_id)
        return user.manager if user else None

    def teams_managed_by(self, manager_id: str) -> set[str]:
        return {t.id for t in self.teams.values() if t.manager == manager_id}

    def teams_in_region(self, region: str) -> list[Team]:
        return [t for t in self.teams.values() if t.region == region]

    def with_role(self, role: Role) -> Iterator[User]:
        return (u for u in self.users.values() if u.role is role)


def load_organisation(path: Path | None = None) -> Organisation:
    path = path or SAMPLE_ORG_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise OrgFileError(f"cannot read the organisation file {path}: {exc}") from exc
    try:
        teams = {t["id"]: Team(**t) for t in raw.get("teams", [])}
        users = {u["id"]: User(**{**u, "role": Role(u["role"])}) for u in raw.get("users", [])}
        quotas = [Quota(**{**q, "amount": Decimal(str(q["amount"]))}) for q in raw.get("quotas", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise OrgFileError(f"invalid organisation file {path}: {exc}") from exc
    org = Organisation(users=users, teams=teams, quotas=quotas)
    _check_references(org, path)
    return org


def _check_references(org: Organisation, path: Path) -> None:
    for user in org.users.values():
        if user.team and user.team not in org.teams:
            raise OrgFileError(f"{path}: user {user.id} names unknown team {user.team}")
        if user.manager and user.manager not in org.users:
            raise OrgFileError(f"{path}: user {user.id} names unknown manager {user.manager}")
    for team in org.teams.values():
        if team.manager and team.manager not in org.users:
            raise OrgFileError(f"{path}: team {team.id} names unknown manager {team.manager}")
    for quota in org.quotas:
        if quota.user not in org.users:
            raise OrgFileError(f"{path}: quota names unknown user {quota.user}")


@lru_cache
def cached_organisation(path: Path | None) -> Organisation:
    return load_organisation(path)
