"""Trace context helpers (shared/context.py), bearer tokens and scope (shared/auth.py),
and the organisation file (shared/org)."""

import re
from decimal import Decimal
from pathlib import Path

import jwt
import pytest

from shared import auth
from shared.auth import ISSUER, InvalidToken, Principal, issue_token, may_act_on, verify_token, visible_owners
from shared.context import Cause, child_traceparent, new_traceparent, trace_id_of
from shared.org import SAMPLE_ORG_FILE, Organisation, OrgFileError, Role, load_organisation

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
SECRET = "unit-test-secret-at-least-32-bytes-long"


@pytest.fixture(scope="module")
def org() -> Organisation:
    return load_organisation()


# --- trace context ---------------------------------------------------------


def test_new_traceparent_has_the_w3c_format() -> None:
    value = new_traceparent()
    match = TRACEPARENT.match(value)
    assert match, value
    assert match.group(1) != "0" * 32 and match.group(2) != "0" * 16


def test_new_traceparents_start_different_traces() -> None:
    assert trace_id_of(new_traceparent()) != trace_id_of(new_traceparent())


def test_child_keeps_the_trace_and_changes_the_span() -> None:
    child = child_traceparent(PARENT)
    match = TRACEPARENT.match(child)
    assert match, child
    assert match.group(1) == TRACE_ID
    assert match.group(2) != "00f067aa0ba902b7"
    assert child_traceparent(PARENT) != child  # a fresh span each time


@pytest.mark.parametrize(
    "parent",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE_ID}-00f067aa0ba902b7",  # three parts
        f"00-{TRACE_ID[:-1]}-00f067aa0ba902b7-01",  # short trace id
        f"00-{'z' * 32}-00f067aa0ba902b7-01",  # not hex
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id is invalid
    ],
)
def test_absent_or_malformed_parent_starts_a_new_trace(parent: str | None) -> None:
    child = child_traceparent(parent)
    match = TRACEPARENT.match(child)
    assert match, child
    assert match.group(1) != "0" * 32
    if parent:
        assert match.group(1) not in parent


@pytest.mark.parametrize(
    "parent",
    [f"00-{TRACE_ID}-zz-01", f"00-{TRACE_ID}-{'0' * 16}-01", f"ff-{TRACE_ID}-00f067aa0ba902b7-01"],
)
def test_a_parent_with_a_malformed_span_or_version_starts_a_new_trace(parent: str) -> None:
    assert trace_id_of(child_traceparent(parent)) != TRACE_ID


def test_trace_id_of() -> None:
    assert trace_id_of(PARENT) == TRACE_ID
    assert trace_id_of(None) is None
    assert trace_id_of("") is None
    assert trace_id_of("00-abc-def-01") is None
    assert trace_id_of(f"00-{'0' * 32}-00f067aa0ba902b7-01") is None
    assert Cause(correlation_id="c", traceparent=PARENT).trace_id == TRACE_ID
    assert Cause(correlation_id="c").trace_id is None


# --- tokens ------------------------------------------------------------------


def test_a_valid_token_gives_the_principal_with_team(org: Organisation) -> None:
    token = issue_token("rep-1", Role.REP, SECRET, 600)
    assert verify_token(token, SECRET, org) == Principal(user_id="rep-1", role=Role.REP, team="east")
    manager = verify_token(issue_token("mgr-2", "manager", SECRET, 600), SECRET, org)
    assert manager == Principal(user_id="mgr-2", role=Role.MANAGER, team="north")
    director = verify_token(issue_token("dir-1", "director", SECRET, 600), SECRET, org)
    assert director.team is None and director.sees_everything


def test_token_claims(org: Organisation) -> None:
    claims = jwt.decode(issue_token("rep-1", "rep", SECRET, 600), SECRET, algorithms=["HS256"], issuer=ISSUER)
    assert claims["sub"] == "rep-1" and claims["role"] == "rep"
    assert claims["exp"] - claims["iat"] == 600


def test_an_expired_token_is_refused(org: Organisation) -> None:
    token = issue_token("rep-1", Role.REP, SECRET, -60)
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(token, SECRET, org)


def test_a_token_signed_with_another_secret_is_refused(org: Organisation) -> None:
    token = issue_token("rep-1", Role.REP, "another-secret-that-is-also-long-enough", 600)
    with pytest.raises(InvalidToken, match="not valid"):
        verify_token(token, SECRET, org)


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c"])
def test_a_malformed_token_is_refused(org: Organisation, token: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET, org)


def test_a_token_without_a_role_is_refused(org: Organisation) -> None:
    token = jwt.encode({"sub": "rep-1", "iss": ISSUER, "exp": 2**31}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="role"):
        verify_token(token, SECRET, org)


def test_a_token_from_another_issuer_is_refused(org: Organisation) -> None:
    token = jwt.encode({"sub": "rep-1", "role": "rep", "iss": "someone", "exp": 2**31}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET, org)


def test_an_unsigned_token_is_refused(org: Organisation) -> None:
    token = jwt.encode({"sub": "admin-1", "role": "admin", "iss": ISSUER, "exp": 2**31}, None, algorithm="none")
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET, org)


def test_an_unknown_role_is_refused(org: Organisation) -> None:
    token = jwt.encode({"sub": "rep-1", "role": "emperor", "iss": ISSUER, "exp": 2**31}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="unknown role"):
        verify_token(token, SECRET, org)


def test_a_verified_token_is_decoded_once_and_refused_once_expired(
    org: Organisation, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = []
    real_decode = jwt.decode

    def counting_decode(*args: object, **kwargs: object) -> object:
        decoded.append(args[0])
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(auth.jwt, "decode", counting_decode)
    token = issue_token("rep-2", Role.REP, SECRET, 600)
    first, second = verify_token(token, SECRET, org), verify_token(token, SECRET, org)
    assert first == second == Principal(user_id="rep-2", role=Role.REP, team="east")
    assert decoded == [token]
    expires_at = jwt.decode(token, SECRET, algorithms=["HS256"], issuer=ISSUER)["exp"]
    monkeypatch.setattr(auth.time, "time", lambda: float(expires_at))
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(token, SECRET, org)


def test_a_verified_token_is_checked_again_under_another_secret_or_organisation(org: Organisation) -> None:
    token = issue_token("rep-1", Role.REP, SECRET, 600)
    verify_token(token, SECRET, org)
    with pytest.raises(InvalidToken, match="not valid"):
        verify_token(token, "another-secret-that-is-also-long-enough", org)
    without_rep_1 = Organisation(users={k: u for k, u in org.users.items() if k != "rep-1"}, teams=org.teams)
    with pytest.raises(InvalidToken, match="unknown user 'rep-1'"):
        verify_token(token, SECRET, without_rep_1)


def test_the_verified_tokens_kept_are_bounded(org: Organisation, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "_VERIFIED_MAX", 3)
    monkeypatch.setattr(auth, "_verified", {})
    tokens = [issue_token("rep-1", Role.REP, SECRET, 600 + i) for i in range(5)]
    for token in tokens:
        verify_token(token, SECRET, org)
    assert [token for token, _ in auth._verified] == tokens[2:]


def test_an_unknown_user_is_refused(org: Organisation) -> None:
    token = issue_token("rep-99", Role.REP, SECRET, 600)
    with pytest.raises(InvalidToken, match="unknown user 'rep-99'"):
        verify_token(token, SECRET, org)


@pytest.mark.parametrize(
    ("user", "claimed"), [("rep-1", Role.ADMIN), ("rep-1", Role.MANAGER), ("mgr-1", Role.DIRECTOR)]
)
def test_a_role_differing_from_the_org_file_is_refused(org: Organisation, user: str, claimed: Role) -> None:
    token = issue_token(user, claimed, SECRET, 600)
    with pytest.raises(InvalidToken, match="role"):
        verify_token(token, SECRET, org)


def test_issue_token_rejects_an_unknown_role() -> None:
    with pytest.raises(ValueError):
        issue_token("rep-1", "emperor", SECRET, 600)


# --- scope ---------------------------------------------------------------------


def principal(org: Organisation, user_id: str) -> Principal:
    user = org.user(user_id)
    assert user is not None
    return Principal(user_id=user.id, role=user.role, team=user.team)


def test_a_rep_sees_only_themself(org: Organisation) -> None:
    rep = principal(org, "rep-1")
    assert visible_owners(rep, org) == {"rep-1"}
    assert may_act_on(rep, "rep-1", org)
    assert not may_act_on(rep, "rep-2", org)
    assert not may_act_on(rep, None, org)


def test_a_manager_sees_their_team_and_themself(org: Organisation) -> None:
    manager = principal(org, "mgr-1")
    owners = visible_owners(manager, org)
    assert owners is not None
    assert {"rep-1", "rep-2", "mgr-1"} <= owners
    assert not owners & {"rep-3", "mgr-2", "dir-1", "admin-1", "svc-erp"}
    assert may_act_on(manager, "rep-2", org)
    assert not may_act_on(manager, "rep-3", org)
    assert not may_act_on(manager, None, org)


def test_the_other_manager_sees_the_other_team(org: Organisation) -> None:
    owners = visible_owners(principal(org, "mgr-2"), org)
    assert owners is not None
    assert "rep-3" in owners and "mgr-2" in owners
    assert not owners & {"rep-1", "rep-2", "mgr-1"}


@pytest.mark.parametrize("user_id", ["dir-1", "admin-1", "svc-erp"])
def test_directors_admins_and_integrations_see_everything(org: Organisation, user_id: str) -> None:
    everyone = principal(org, user_id)
    assert visible_owners(everyone, org) is None
    assert may_act_on(everyone, "rep-3", org)
    assert may_act_on(everyone, "someone-not-in-the-file", org)


# --- the organisation file ------------------------------------------------------


@pytest.mark.parametrize(
    ("user_id", "role", "team", "region", "manager"),
    [
        ("rep-1", Role.REP, "east", "华东", "mgr-1"),
        ("rep-2", Role.REP, "east", "华东", "mgr-1"),
        ("rep-3", Role.REP, "north", "华北", "mgr-2"),
        ("mgr-1", Role.MANAGER, "east", "华东", "dir-1"),
        ("mgr-2", Role.MANAGER, "north", "华北", "dir-1"),
    ],
)
def test_the_sample_has_the_contract_users(
    org: Organisation, user_id: str, role: Role, team: str, region: str, manager: str
) -> None:
    user = org.user(user_id)
    assert user is not None
    assert (user.role, user.team, user.region, user.manager) == (role, team, region, manager)


@pytest.mark.parametrize(
    ("user_id", "role"), [("dir-1", Role.DIRECTOR), ("admin-1", Role.ADMIN), ("svc-erp", Role.INTEGRATION)]
)
def test_the_sample_has_the_contract_roles(org: Organisation, user_id: str, role: Role) -> None:
    user = org.user(user_id)
    assert user is not None and user.role is role


def test_the_sample_teams_and_quotas(org: Organisation) -> None:
    assert [u.id for u in org.members("east")] == ["rep-1", "rep-2"]
    assert org.teams_managed_by("mgr-1") == {"east"}
    assert org.team_of("rep-3") == "north" and org.manager_of("mgr-2") == "dir-1"
    assert org.team_of("nobody") is None
    assert {t.id for t in org.teams_in_region("华北")} == {"north"}
    quota = next(q for q in org.quotas if q.user == "rep-1")
    assert quota.amount == Decimal("1500000") and quota.currency == "CNY"
    assert load_organisation(SAMPLE_ORG_FILE).users.keys() == org.users.keys()


TEAM = '[[teams]]\nid = "east"\nname = "East"\nregion = "华东"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "org.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_small_valid_file_loads(tmp_path: Path) -> None:
    org = load_organisation(write(tmp_path, TEAM + '[[users]]\nid = "u1"\nname = "U"\nrole = "rep"\nteam = "east"\n'))
    assert org.user("u1") is not None and org.team_of("u1") == "east"


def test_an_unknown_team_reference_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, TEAM + '[[users]]\nid = "u1"\nname = "U"\nrole = "rep"\nteam = "west"\n')
    with pytest.raises(OrgFileError, match="user u1 names unknown team west"):
        load_organisation(path)


def test_an_unknown_manager_reference_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, TEAM + '[[users]]\nid = "u1"\nname = "U"\nrole = "rep"\nmanager = "ghost"\n')
    with pytest.raises(OrgFileError, match="unknown manager ghost"):
        load_organisation(path)


def test_a_quota_for_an_unknown_user_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, TEAM + '[[quotas]]\nuser = "ghost"\nperiod = "2026-Q4"\namount = "1"\n')
    with pytest.raises(OrgFileError, match="quota names unknown user ghost"):
        load_organisation(path)


def test_bad_toml_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[[users]\nid = ")
    with pytest.raises(OrgFileError, match="cannot read the organisation file") as caught:
        load_organisation(path)
    assert "org.toml" in str(caught.value)


def test_an_unknown_role_in_the_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[[users]]\nid = "u1"\nname = "U"\nrole = "emperor"\n')
    with pytest.raises(OrgFileError, match="invalid organisation file"):
        load_organisation(path)


def test_a_user_without_a_name_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OrgFileError, match="invalid organisation file"):
        load_organisation(write(tmp_path, '[[users]]\nid = "u1"\nrole = "rep"\n'))


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OrgFileError, match="cannot read"):
        load_organisation(tmp_path / "absent.toml")
