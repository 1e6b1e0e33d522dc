"""Bearer tokens and record scope.

A token is an HS256 JWT carrying the user's id and role, signed with FUNNELCAST_AUTH_SECRET.
Scope: a rep sees their own records, a manager their team's, directors, admins and
integrations everything.
"""

import time
from dataclasses import dataclass

import jwt

from shared.org import Organisation, Role

ISSUER = "funnelcast"
_ALGORITHM = "HS256"


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: Role
    team: str | None = None

    @property
    def sees_everything(self) -> bool:
        return self.role in (Role.DIRECTOR, Role.ADMIN, Role.INTEGRATION)


def issue_token(user_id: str, role: Role | str, secret: str, ttl_s: int) -> str:
    now = int(time.time())
    claims = {"sub": user_id, "role": str(Role(role)), "iss": ISSUER, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


# Tokens already verified, so a client sending the same token with every request does not pay for
# the HMAC and the claim checks each time (about a tenth of a lead capture's CPU). Keyed by the
# secret too; an entry answers only for the organisation it was checked against and only until the
# token's expiry. Only valid tokens get in (forging one needs the secret); at the bound, the oldest
# entries go first.
_VERIFIED_MAX = 4096
_verified: dict[tuple[str, str], tuple[Principal, float, Organisation]] = {}


def verify_token(token: str, secret: str, org: Organisation) -> Principal:
    known = _verified.get((token, secret))
    if known is not None:
        principal, expires_at, checked_against = known
        if time.time() >= expires_at:
            del _verified[(token, secret)]
            raise InvalidToken("the token has expired")
        if checked_against is org:
            return principal
    principal, expires_at = _verify(token, secret, org)
    while len(_verified) >= _VERIFIED_MAX:
        del _verified[next(iter(_verified))]
    _verified[(token, secret)] = (principal, expires_at, org)
    return principal


def _verify(token: str, secret: str, org: Organisation) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(
            token, secret, algorithms=[_ALGORITHM], issuer=ISSUER, options={"require": ["sub", "exp", "role"]}
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("the token has expired") from None
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"the token is not valid: {exc}") from None
    try:
        role = Role(claims["role"])
    except ValueError:
        raise InvalidToken(f"unknown role {claims['role']!r}") from None
    user = org.user(claims["sub"])
    if user is None:
        raise InvalidToken(f"unknown user {claims['sub']!r}")
    # The organisation file, not the token, is the authority on a user's role.
    if user.role is not role:
        raise InvalidToken(f"the token's role {role} is not {user.id}'s role")
    return Principal(user_id=user.id, role=role, team=user.team), float(claims["exp"])


def visible_owners(principal: Principal, org: Organisation) -> set[str] | None:
    """The owner ids whose records the principal may see; None means all."""
    if principal.sees_everything:
        return None
    if principal.role is Role.MANAGER:
        teams = org.teams_managed_by(principal.user_id) | ({principal.team} if principal.team else set())
        owners = {u.id for u in org.users.values() if u.team in teams or u.manager == principal.user_id}
        return owners | {principal.user_id}
    return {principal.user_id}


def may_act_on(principal: Principal, owner_id: str | None, org: Organisation) -> bool:
    owners = visible_owners(principal, org)
    if owners is None:
        return True
    return owner_id is not None and owner_id in owners
