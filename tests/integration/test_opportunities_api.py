"""The opportunities service over HTTP and Kafka, against the session's real Postgres and Tansu:
accounts, opportunities and their stage / status rules, optimistic concurrency, scope, listing,
contracts with the credit limit, the events it publishes, and lead conversion under redelivery."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.forecasting import handlers as forecasting
from services.notifications import handlers as notifications
from services.opportunities import store
from services.opportunities.main import service
from services.scoring import handlers as scoring
from shared.auth import issue_token
from shared.db import Database, new_event
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent, parse_and_validate
from shared.inbox import DeadLetters, EventProcessor, Message, Outcome
from shared.org import Role
from shared.service import create_service_app
from shared.settings import Settings
from tests.support.topics import read_topic
from tests.support.waiting import eventually

ROLES = {
    "rep-1": Role.REP, "rep-2": Role.REP, "rep-3": Role.REP, "mgr-1": Role.MANAGER, "mgr-2": Role.MANAGER,
    "dir-1": Role.DIRECTOR, "admin-1": Role.ADMIN, "svc-erp": Role.INTEGRATION,
}


@pytest.fixture(scope="module")
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(service, settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture(scope="module")
async def tables(settings: Settings, http: httpx.AsyncClient) -> AsyncIterator[asyncpg.Pool]:
    """The service's own database, to look at what it stored."""
    pool = await asyncpg.create_pool(settings.database_url_for("opportunities"), min_size=1, max_size=3)
    yield pool
    await pool.close()


def as_(settings: Settings, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(user, ROLES[user], settings.signing_secret, 600)}"}


def unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:10]}"


async def open_opportunity(
    http: httpx.AsyncClient, settings: Settings, user: str = "rep-1", **body: Any
) -> dict[str, Any]:
    payload = {"name": unique("项目"), "account_name": unique("客户"), "amount": "120000.00", **body}
    if "account_id" in body:
        payload.pop("account_name")
    response = await http.post("/v1/opportunities", json=payload, headers=as_(settings, user))
    assert response.status_code == 201, response.text
    return dict(response.json())


async def post(
    http: httpx.AsyncClient, settings: Settings, path: str, body: dict[str, Any] | None = None, user: str = "rep-1",
    **headers: str,
) -> httpx.Response:
    named = {name.replace("_", "-"): value for name, value in headers.items()}  # if_match -> If-Match
    return await http.post(path, json=body, headers={**as_(settings, user), **named})


def problem(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail


# --- creating -----------------------------------------------------------------------------


async def test_an_opportunity_opens_in_the_first_stage(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings, currency="CNY", expected_close_date="2026-12-31")
    assert opp["id"] and opp["account_id"]
    assert (opp["stage"], opp["status"], opp["probability"]) == ("prospecting", "open", 10)
    assert (opp["amount"], opp["currency"], opp["owner_id"]) == ("120000.00", "CNY", "rep-1")
    assert (opp["expected_close_date"], opp["version"]) == ("2026-12-31", 1)
    assert opp["stage_label"] == {"zh-CN": "潜在客户跟踪", "en": "Prospecting"}
    got = await http.get(f"/v1/opportunities/{opp['id']}", headers=as_(settings, "rep-1"))
    assert got.status_code == 200 and got.headers["etag"] == '"1"'
    assert got.json()["amount"] == "120000.00"


async def test_an_account_named_twice_is_one_account(http: httpx.AsyncClient, settings: Settings) -> None:
    name = unique("北京 星河科技有限公司")
    first = await open_opportunity(http, settings, account_name=name)
    second = await open_opportunity(http, settings, account_name=f"（{name.replace(' ', '')}）", user="rep-2")
    assert first["account_id"] == second["account_id"]
    account = await http.get(f"/v1/accounts/{first['account_id']}", headers=as_(settings, "rep-3"))
    assert account.status_code == 200 and account.json()["name"] == name
    again = await http.post("/v1/accounts", json={"name": name.upper()}, headers=as_(settings, "rep-1"))
    problem(again, 409, first["account_id"])
    by_id = await open_opportunity(http, settings, account_id=first["account_id"])
    assert by_id["account_id"] == first["account_id"]


async def test_updating_an_account(http: httpx.AsyncClient, settings: Settings) -> None:
    parent = (await post(http, settings, "/v1/accounts", {"name": unique("集团")})).json()
    child = (await post(http, settings, "/v1/accounts", {"name": unique("子公司"), "owner_id": "rep-1"})).json()
    path = f"/v1/accounts/{child['id']}"
    headers = as_(settings, "rep-1")
    changed = await http.patch(path, json={"parent_account_id": parent["id"], "key_account": True, "region": "华东",
                                           "version": 1}, headers=headers)
    assert changed.status_code == 200, changed.text
    assert (changed.json()["parent_account_id"], changed.json()["key_account"], changed.json()["version"]) == (
        parent["id"], True, 2)
    assert changed.headers["etag"] == '"2"'
    problem(await http.patch(path, json={"region": "华北", "version": 1}, headers=headers), 412)
    problem(await http.patch(f"/v1/accounts/{parent['id']}", json={"parent_account_id": child["id"]},
                             headers=headers), 422, "no cycles")
    problem(await http.patch(path, json={"credit_limit": "5000"}, headers=headers), 403, "credit")
    problem(await http.patch(path, json={"region": "华南"}, headers=as_(settings, "rep-2")), 403)
    problem(await http.patch(path, json={"name": parent["name"].lower()}, headers=headers), 409, parent["id"])
    limited = await http.patch(path, json={"credit_limit": "5000"}, headers=as_(settings, "mgr-1"))
    assert (limited.json()["credit_limit"], limited.json()["version"]) == ("5000.00", 3)

    records = await read_topic(settings, "sales.accounts", count=3, match=child["id"].encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [(e.type, e.sequence) for e in events] == [
        ("sales.account.created.v1", 1), ("sales.account.updated.v1", 2), ("sales.account.updated.v1", 3)]
    assert events[1].data["changed_fields"] == ["key_account", "parent_account_id", "region"]
    assert events[2].data["changed_fields"] == ["credit_limit"] and events[2].data["updated_by"] == "mgr-1"


async def test_creating_refuses_bad_input_and_foreign_owners(http: httpx.AsyncClient, settings: Settings) -> None:
    base = {"name": "x", "account_name": unique("客户")}
    for body, status, word in [
        ({**base, "amount": 1200.5}, 422, "amount"),
        ({**base, "amount": "12.345"}, 422, "two decimal"),
        ({**base, "amount": "-1"}, 422, "negative"),
        ({**base, "currency": "rmb"}, 422, "ISO 4217"),
        ({"name": "x"}, 422, "account_id or account_name"),
        ({"name": "x", "account_id": "acc-missing"}, 422, "does not exist"),
        ({**base, "owner_id": "nobody"}, 422, "not a user"),
        ({**base, "owner_id": "rep-2"}, 403, "scope"),
    ]:
        problem(await post(http, settings, "/v1/opportunities", body), status, word)
    made = await open_opportunity(http, settings, user="mgr-1", owner_id="rep-2")  # a manager, for the team
    assert made["owner_id"] == "rep-2"
    assert (await http.post("/v1/opportunities", json=base)).status_code == 401


# --- stages and status --------------------------------------------------------------------


async def test_stage_changes_are_recorded_with_who_when_from_to(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings)
    path = f"/v1/opportunities/{opp['id']}"
    moved = await post(http, settings, f"{path}/stage", {"stage": "bidding"})
    assert moved.status_code == 200 and moved.headers["etag"] == '"2"'
    assert (moved.json()["stage"], moved.json()["probability"], moved.json()["version"]) == ("bidding", 30, 2)
    moved = await post(http, settings, f"{path}/stage", {"stage": "negotiation"}, user="mgr-1")
    assert moved.json()["probability"] == 60
    history = (await http.get(path, headers=as_(settings, "rep-1"))).json()["stage_history"]
    assert [(h["from_stage"], h["to_stage"], h["changed_by"]) for h in history] == [
        ("prospecting", "bidding", "rep-1"), ("bidding", "negotiation", "mgr-1"),
    ]
    assert all(h["changed_at"] and h["seconds_in_previous_stage"] >= 0 for h in history)


async def test_moves_the_pipeline_refuses(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings)
    path = f"/v1/opportunities/{opp['id']}/stage"
    problem(await post(http, settings, path, {"stage": "closing"}), 409, "unknown stage")
    problem(await post(http, settings, path, {"stage": "won"}), 409, "close")
    problem(await post(http, settings, path, {"stage": "prospecting"}), 409, "already")
    got = (await http.get(f"/v1/opportunities/{opp['id']}", headers=as_(settings, "rep-1"))).json()
    assert (got["version"], got["stage_history"]) == (1, [])


async def test_closing_needs_a_summary_and_is_final(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings)
    path = f"/v1/opportunities/{opp['id']}"
    problem(await post(http, settings, f"{path}/close", {"outcome": "lost", "reason": "price"}), 422, "competitor")
    problem(await post(http, settings, f"{path}/close", {"outcome": "won"}), 422, "reason")
    lost = await post(http, settings, f"{path}/close", {"outcome": "lost", "reason": "price", "competitor": "Acme"})
    assert lost.status_code == 200, lost.text
    body = lost.json()
    assert (body["stage"], body["status"], body["probability"]) == ("lost", "lost", 0)
    assert (body["close_reason"], body["competitor"]) == ("price", "Acme")
    problem(await post(http, settings, f"{path}/stage", {"stage": "bidding"}), 409, "closed lost")
    problem(await post(http, settings, f"{path}/close", {"outcome": "won", "reason": "x"}), 409, "closed lost")
    problem(await post(http, settings, f"{path}/suspend", {"reason": "x"}), 409, "closed lost")
    won = await open_opportunity(http, settings)
    closed = await post(http, settings, f"/v1/opportunities/{won['id']}/close", {"outcome": "won", "reason": "fit"})
    assert (closed.json()["stage"], closed.json()["status"], closed.json()["probability"]) == ("won", "won", 100)


async def test_suspend_reactivate_terminate(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings)
    path = f"/v1/opportunities/{opp['id']}"
    problem(await post(http, settings, f"{path}/suspend", {}), 422, "reason")
    suspended = await post(http, settings, f"{path}/suspend", {"reason": "budget frozen"})
    assert suspended.json()["status"] == "suspended"
    problem(await post(http, settings, f"{path}/stage", {"stage": "bidding"}), 409, "suspended", "reactivate")
    reactivated = await post(http, settings, f"{path}/reactivate")  # no body: no reason needed
    assert reactivated.status_code == 200, reactivated.text
    assert reactivated.json()["status"] == "open"
    problem(await post(http, settings, f"{path}/reactivate"), 409, "only a suspended")
    problem(await post(http, settings, f"{path}/terminate", {}), 422, "reason")
    terminated = await post(http, settings, f"{path}/terminate", {"reason": "project cancelled"})
    assert (terminated.json()["status"], terminated.json()["version"]) == ("terminated", 4)
    for action in ("reactivate", "suspend", "terminate"):
        problem(await post(http, settings, f"{path}/{action}", {"reason": "again"}), 409, "terminated")
    problem(await post(http, settings, f"{path}/stage", {"stage": "bidding"}), 409, "terminated")


ASSESSMENT = {"need": "decided", "budget": "preliminary", "urgency": "driving", "timing": "flexible",
              "decision_maker_trust": "high", "decision_process_knowledge": "medium", "leverage": "low"}


async def test_the_maturity_assessment_is_kept_and_published(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    opp = await open_opportunity(http, settings)
    path = f"/v1/opportunities/{opp['id']}/assessment"
    headers = as_(settings, "rep-1")
    problem(await http.put(path, json={**ASSESSMENT, "budget": "huge"}, headers=headers), 422, "budget must be one of")
    assessed = await http.put(path, json=ASSESSMENT, headers=headers)
    assert assessed.status_code == 200, assessed.text
    assert (assessed.json()["assessment"], assessed.json()["maturity"], assessed.json()["version"]) == (
        ASSESSMENT, 64, 2)  # 9 of 14 points
    better = await http.put(path, json={**ASSESSMENT, "leverage": "high", "version": 2}, headers=headers)
    assert better.json()["maturity"] == 79  # 11 of 14
    problem(await http.put(path, json={**ASSESSMENT, "version": 2}, headers=headers), 412)
    problem(await http.put(path, json=ASSESSMENT, headers=as_(settings, "rep-2")), 403)
    got = (await http.get(f"/v1/opportunities/{opp['id']}", headers=headers)).json()
    assert got["assessment"]["leverage"] == "high" and got["maturity"] == 79
    await post(http, settings, f"/v1/opportunities/{opp['id']}/suspend", {"reason": "paused"})
    problem(await http.put(path, json=ASSESSMENT, headers=headers), 409, "suspended")

    records = await read_topic(settings, "sales.opportunities", count=4, match=opp["id"].encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [e.type for e in events][1:3] == ["sales.opportunity.assessed.v1"] * 2
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert (events[2].data["assessment"]["leverage"], events[2].data["maturity"], events[2].data["assessed_by"]) == (
        "high", 79, "rep-1")


async def test_owners_with_splits_and_transfer(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings, user="rep-1")
    path = f"/v1/opportunities/{opp['id']}/owners"
    assert opp["owners"] == [{"owner_id": "rep-1", "split": 100}]
    split = {"owners": [{"owner_id": "rep-1", "split": 70}, {"owner_id": "rep-2", "split": 30}]}
    problem(await http.put(path, json=split, headers=as_(settings, "rep-1")), 403, "rep-2")  # a rep cannot share
    problem(await http.put(path, json={"owners": [{"owner_id": "rep-1", "split": 70}]}, headers=as_(settings, "mgr-1")),
            422, "sum to 100")
    problem(await http.put(path, json={"owners": [{"owner_id": "rep-3", "split": 100}]},
                           headers=as_(settings, "mgr-1")), 403)  # rep-3 is not in mgr-1's team
    shared = await http.put(path, json=split, headers=as_(settings, "mgr-1"))
    assert shared.status_code == 200, shared.text
    assert (shared.json()["owner_id"], shared.json()["owners"]) == ("rep-1", split["owners"])
    transferred = await http.put(path, json={"owners": [{"owner_id": "rep-2", "split": 100}], "version": 2},
                                 headers=as_(settings, "mgr-1"))
    assert (transferred.json()["owner_id"], transferred.json()["version"]) == ("rep-2", 3)
    assert (await http.get(f"/v1/opportunities/{opp['id']}", headers=as_(settings, "rep-1"))).status_code == 403
    assert (await http.get(f"/v1/opportunities/{opp['id']}", headers=as_(settings, "rep-2"))).status_code == 200

    records = await read_topic(settings, "sales.opportunities", count=3, match=opp["id"].encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [e.type for e in events][1:] == ["sales.opportunity.owners_changed.v1"] * 2
    assert [e.sequence for e in events] == [1, 2, 3]
    assert (events[2].data["previous_owner_id"], events[2].data["owner_id"], events[2].data["changed_by"]) == (
        "rep-1", "rep-2", "mgr-1")


async def test_only_closed_opportunities_are_archived(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings)
    path = f"/v1/opportunities/{opp['id']}"
    problem(await post(http, settings, f"{path}/archive"), 409, "only a closed")
    await post(http, settings, f"{path}/close", {"outcome": "lost", "reason": "price", "competitor": "Acme"})
    archived = await post(http, settings, f"{path}/archive", user="mgr-1")
    assert (archived.json()["status"], archived.json()["stage"], archived.json()["version"]) == ("archived", "lost", 3)
    problem(await post(http, settings, f"{path}/archive"), 409, "archived")
    problem(await post(http, settings, f"{path}/stage", {"stage": "bidding"}), 409, "archived")
    listed = (await http.get("/v1/opportunities?status=archived&limit=500", headers=as_(settings, "rep-1"))).json()
    assert opp["id"] in [o["id"] for o in listed["items"]]
    [*_, event] = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.opportunities", count=3, match=opp["id"].encode())]
    assert (event.type, event.sequence, event.data["outcome"], event.data["by"]) == (
        "sales.opportunity.archived.v1", 3, "lost", "mgr-1")


# --- editing ------------------------------------------------------------------------------


async def patch(http: httpx.AsyncClient, settings: Settings, path: str, body: dict[str, Any], user: str = "rep-1",
                **headers: str) -> httpx.Response:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return await http.patch(path, json=body, headers={**as_(settings, user), **named})


async def test_editing_an_open_opportunity_publishes_the_changed_fields(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    opp = await open_opportunity(http, settings, expected_close_date="2026-12-15", product="GTX Basic")
    path = f"/v1/opportunities/{opp['id']}"
    edited = await patch(http, settings, path, {"amount": "150000.50", "expected_close_date": "2027-01-20",
                                                "name": "  Phase two  "}, if_match='"1"')
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert (body["amount"], body["expected_close_date"], body["name"], body["stage"], body["version"]) == (
        "150000.50", "2027-01-20", "Phase two", "prospecting", 2)
    assert edited.headers["etag"] == '"2"'
    cleared = await patch(http, settings, path, {"product": None, "amount": "150000.50", "version": 2})
    assert (cleared.json()["product"], cleared.json()["version"]) == (None, 3)  # the amount did not change
    unchanged = await patch(http, settings, path, {"amount": "150000.50"})
    assert unchanged.json()["version"] == 3  # nothing changed: no new version, no event

    records = await read_topic(settings, "sales.opportunities", count=3, match=opp["id"].encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [(e.type, e.sequence) for e in events] == [
        ("sales.opportunity.created.v1", 1), ("sales.opportunity.updated.v1", 2), ("sales.opportunity.updated.v1", 3)]
    first, second = events[1].data, events[2].data
    assert first["changed_fields"] == ["amount", "expected_close_date", "name"]
    assert first["changes"] == {"amount": "150000.50", "expected_close_date": "2027-01-20", "name": "Phase two"}
    assert first["previous"]["amount"] == "120000.00" and first["previous"]["expected_close_date"] == "2026-12-15"
    assert (first["amount"], first["product"], first["stage"], first["changed_by"]) == (
        "150000.50", "GTX Basic", "prospecting", "rep-1")
    assert (second["changes"], second["previous"], second["product"]) == (
        {"product": None}, {"product": "GTX Basic"}, None)


async def test_editing_refuses_bad_fields_stale_versions_closed_deals_and_other_scopes(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    opp = await open_opportunity(http, settings)
    path = f"/v1/opportunities/{opp['id']}"
    for body, field in [({"amount": 12.5}, "amount"), ({"amount": "1.234"}, "amount"), ({"amount": "-3"}, "amount"),
                        ({"currency": "yuan"}, "currency"), ({"name": None}, "name"), ({"name": "  "}, "name"),
                        ({"expected_close_date": "soon"}, "expected_close_date"), ({"stage": "won"}, "stage")]:
        problem(await patch(http, settings, path, body), 422, field)
    problem(await patch(http, settings, path, {"amount": "1.00"}, if_match='"7"'), 412, "version 1")
    problem(await patch(http, settings, path, {"amount": "1.00"}, user="rep-2"), 403)
    assert (await patch(http, settings, path, {"amount": "1.00"}, user="mgr-1")).status_code == 200
    await post(http, settings, f"{path}/close", {"outcome": "won", "reason": "signed"})
    problem(await patch(http, settings, path, {"amount": "2.00"}), 409, "won")
    got = (await http.get(path, headers=as_(settings, "rep-1"))).json()
    assert (got["amount"], got["version"]) == ("1.00", 3)


# --- concurrency --------------------------------------------------------------------------


async def test_a_stale_version_gets_412_and_changes_nothing(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings)
    path = f"/v1/opportunities/{opp['id']}"
    assert (await post(http, settings, f"{path}/stage", {"stage": "bidding"}, if_match='"1"')).status_code == 200
    problem(await post(http, settings, f"{path}/stage", {"stage": "negotiation"}, if_match='"1"'), 412, "version 2")
    problem(await post(http, settings, f"{path}/stage", {"stage": "negotiation", "version": 1}), 412, "reload")
    problem(await post(http, settings, f"{path}/suspend", {"reason": "x", "version": 1}), 412)
    problem(await post(http, settings, f"{path}/close", {"outcome": "won", "reason": "x", "version": 7}), 412)
    got = await http.get(path, headers=as_(settings, "rep-1"))
    assert (got.json()["stage"], got.json()["status"], got.headers["etag"]) == ("bidding", "open", '"2"')
    ok = await post(http, settings, f"{path}/stage", {"stage": "negotiation", "version": 2}, if_match='W/"2"')
    assert ok.status_code == 200 and ok.json()["version"] == 3


async def test_two_concurrent_updates_one_wins_the_other_gets_412(
    http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool
) -> None:
    for _ in range(5):
        opp = await open_opportunity(http, settings)
        path = f"/v1/opportunities/{opp['id']}"
        first, second = await asyncio.gather(
            post(http, settings, f"{path}/stage", {"stage": "bidding"}, if_match='"1"'),
            post(http, settings, f"{path}/stage", {"stage": "negotiation"}, user="mgr-1", if_match='"1"'),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 412], (first.text, second.text)
        winner = first if first.status_code == 200 else second
        got = (await http.get(path, headers=as_(settings, "rep-1"))).json()
        assert (got["stage"], got["version"]) == (winner.json()["stage"], 2)
        assert len(got["stage_history"]) == 1
        events = await tables.fetchval("SELECT count(*) FROM outbox WHERE aggregateid = $1", opp["id"])
        assert events == 2  # created + the one stage change


async def test_the_version_check_is_in_the_update_itself(http: httpx.AsyncClient, settings: Settings,
                                                         tables: asyncpg.Pool) -> None:
    """Two writers that both read version 1: the second waits on the first's row lock, then changes nothing
    and writes neither a history row nor its event."""
    opp = await open_opportunity(http, settings)
    now = datetime.now(UTC)

    def moved_event(to_stage: str, by: str) -> CloudEvent:
        return new_event("/funnelcast/opportunities", "sales.opportunity.stage_changed.v1", opp["id"], {
            "opportunity_id": opp["id"], "from_stage": "prospecting", "to_stage": to_stage, "probability": 30,
            "amount": opp["amount"], "currency": opp["currency"], "owner_id": opp["owner_id"], "changed_by": by,
            "changed_at": now.isoformat()}, sequence=2)

    async with tables.acquire() as first, tables.acquire() as second:
        current = store.to_domain(await store.opportunity(first, opp["id"]))
        to_bidding, first_move = current.move_to("bidding", now)
        to_negotiation, late_move = current.move_to("negotiation", now)
        async with first.transaction():
            recorded = store.RecordedMove(first_move, "rep-1", now)
            assert await store.save_opportunity(
                first, to_bidding, expected_version=1, move=recorded, events=[moved_event("bidding", "rep-1")]
            ) is not None
            late = asyncio.create_task(store.save_opportunity(
                second, to_negotiation, expected_version=1, move=store.RecordedMove(late_move, "mgr-1", now),
                events=[moved_event("negotiation", "mgr-1")]))

            async def waiting_on_the_lock() -> bool:
                return bool(await tables.fetchval(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"))

            await eventually(waiting_on_the_lock)
        assert await late is None
    got = (await http.get(f"/v1/opportunities/{opp['id']}", headers=as_(settings, "rep-1"))).json()
    assert (got["stage"], got["version"]) == ("bidding", 2)
    # the history row and the event are written by the update's own statement: none for the writer that
    # changed nothing
    assert [(h["to_stage"], h["changed_by"]) for h in got["stage_history"]] == [("bidding", "rep-1")]
    published = await tables.fetch(
        "SELECT type, payload->'data'->>'to_stage' AS to_stage FROM outbox WHERE aggregateid = $1 ORDER BY position",
        opp["id"])
    assert [(e["type"], e["to_stage"]) for e in published] == [
        ("sales.opportunity.created.v1", None), ("sales.opportunity.stage_changed.v1", "bidding")]


async def test_stage_moves_saved_in_one_statement_each_keep_the_version_rules(
    http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool
) -> None:
    """A group-committed batch of stage moves (store.save_stage_moves): each is saved only at its version
    and its pipeline's, with its own history row and event; a second move of the same deal in the batch
    sees the first one's version."""
    deals = [await open_opportunity(http, settings) for _ in range(4)]
    ids = [deal["id"] for deal in deals]
    now = datetime.now(UTC)
    loaded = await store.opportunities_by_id(tables, [ids[0], "no-such-deal", ids[1], ids[0], ids[2], ids[3]])
    assert [row and row["id"] for row in loaded] == [ids[0], None, ids[1], ids[0], ids[2], ids[3]]
    current = {row["id"]: store.to_domain(row) for row in loaded if row is not None}

    def save(deal: int, to_stage: str, version: int = 1) -> store.StageMoveSave:
        moved, move = current[ids[deal]].move_to(to_stage, now)
        event = new_event("/funnelcast/opportunities", "sales.opportunity.stage_changed.v1", ids[deal], {
            "opportunity_id": ids[deal], "from_stage": "prospecting", "to_stage": to_stage, "probability": 30,
            "amount": "120000.00", "currency": "CNY", "owner_id": "rep-1", "changed_by": "rep-1",
            "changed_at": now.isoformat()}, sequence=version + 1)
        return store.StageMoveSave(moved, version, store.RecordedMove(move, "rep-1", now), [event])

    await tables.execute("UPDATE opportunities SET version = 2 WHERE id = $1", ids[2])  # changed meanwhile
    saved = await store.save_stage_moves(tables, [
        save(0, "bidding"), save(1, "negotiation"), save(0, "contract"), save(2, "bidding"),
        save(0, "negotiation", version=2), save(3, "bidding"),
    ])

    assert [row and (row["id"], row["stage"], row["version"]) for row in saved] == [
        (ids[0], "bidding", 2), (ids[1], "negotiation", 2),
        None,  # the deal's second move of version 1: the first one made it 2
        None,  # stale
        (ids[0], "negotiation", 3),  # a move of version 2, after the first
        (ids[3], "bidding", 2),
    ]
    history = await tables.fetch(
        "SELECT opportunity_id, to_stage FROM stage_history WHERE opportunity_id = ANY($1::text[]) ORDER BY id", ids)
    assert sorted((h["opportunity_id"], h["to_stage"]) for h in history) == sorted(
        [(ids[0], "bidding"), (ids[1], "negotiation"), (ids[0], "negotiation"), (ids[3], "bidding")])
    published = await tables.fetch(
        "SELECT aggregateid, payload->'data'->>'to_stage' AS to_stage FROM outbox"
        " WHERE aggregateid = ANY($1::text[]) AND type = 'sales.opportunity.stage_changed.v1'", ids)
    assert sorted((e["aggregateid"], e["to_stage"]) for e in published) == sorted(
        [(ids[0], "bidding"), (ids[1], "negotiation"), (ids[0], "negotiation"), (ids[3], "bidding")])


# --- scope and listing --------------------------------------------------------------------


async def test_scope_rep_own_manager_team_director_all(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings, user="rep-1")
    path = f"/v1/opportunities/{opp['id']}"
    for user, status in [("rep-1", 200), ("rep-2", 403), ("rep-3", 403), ("mgr-1", 200), ("mgr-2", 403),
                         ("dir-1", 200), ("admin-1", 200), ("svc-erp", 200)]:
        assert (await http.get(path, headers=as_(settings, user))).status_code == status, user
    problem(await post(http, settings, f"{path}/stage", {"stage": "bidding"}, user="rep-2"), 403, "scope")
    problem(await post(http, settings, f"{path}/suspend", {"reason": "x"}, user="mgr-2"), 403)
    listed = (await http.get("/v1/opportunities?limit=500", headers=as_(settings, "rep-2"))).json()["items"]
    assert listed and {o["owner_id"] for o in listed} == {"rep-2"}
    assert (await http.get("/v1/opportunities/opp-missing", headers=as_(settings, "dir-1"))).status_code == 404


async def test_listing_filters_and_pages_with_a_cursor(http: httpx.AsyncClient, settings: Settings) -> None:
    account = (await http.post("/v1/accounts", json={"name": unique("列表客户"), "region": "华北"},
                               headers=as_(settings, "rep-3"))).json()
    made = []
    for amount, close in [("1000.00", "2026-12-01"), ("5000.00", "2027-01-15"), ("9000.00", "2027-03-01")]:
        made.append(await open_opportunity(http, settings, user="rep-3", account_id=account["id"], amount=amount,
                                           expected_close_date=close))
    await post(http, settings, f"/v1/opportunities/{made[2]['id']}/stage", {"stage": "bidding"}, user="rep-3")
    headers = as_(settings, "mgr-2")
    base = f"/v1/opportunities?account_id={account['id']}"
    page = (await http.get(f"{base}&limit=2", headers=headers)).json()
    assert [o["id"] for o in page["items"]] == [made[0]["id"], made[1]["id"]] and page["next_cursor"]
    rest = (await http.get(f"{base}&limit=2&cursor={page['next_cursor']}", headers=headers)).json()
    assert [o["id"] for o in rest["items"]] == [made[2]["id"]] and rest["next_cursor"] is None

    async def ids(query: str, user: str = "mgr-2") -> list[str]:
        response = await http.get(f"{base}&{query}", headers=as_(settings, user))
        assert response.status_code == 200, response.text
        return [o["id"] for o in response.json()["items"]]

    assert await ids("stage=bidding") == [made[2]["id"]]
    assert await ids("amount_min=2000&amount_max=9000.00") == [made[1]["id"], made[2]["id"]]
    assert await ids("close_from=2027-01-01&close_to=2027-02-01") == [made[1]["id"]]
    assert await ids("region=华北&status=open&team=north") == [o["id"] for o in made]
    assert await ids("owner_id=rep-3") == [o["id"] for o in made]
    assert await ids("team=east") == []
    assert await ids("owner_id=rep-3", user="mgr-1") == []  # rep-3 is outside mgr-1's team
    problem(await http.get(f"{base}&cursor=nonsense", headers=headers), 422, "cursor")


# --- contracts ----------------------------------------------------------------------------


async def test_contracts_and_the_credit_limit(http: httpx.AsyncClient, settings: Settings) -> None:
    problem(await post(http, settings, "/v1/accounts", {"name": unique("x"), "credit_limit": "1"}), 403, "credit")
    account = await post(http, settings, "/v1/accounts", {"name": unique("信用客户"), "credit_limit": "100000"},
                         user="mgr-1")
    assert account.status_code == 201 and account.json()["credit_limit"] == "100000.00"
    account_id = account.json()["id"]
    opp = await open_opportunity(http, settings, account_id=account_id, amount="150000.00")
    problem(await post(http, settings, "/v1/contracts", {"opportunity_id": opp["id"]}), 409, "contract stage")
    for stage in ("bidding", "negotiation", "contract"):
        await post(http, settings, f"/v1/opportunities/{opp['id']}/stage", {"stage": stage})

    first = await post(http, settings, "/v1/contracts", {"opportunity_id": opp["id"], "amount": "60000"})
    assert first.status_code == 201, first.text
    assert (first.json()["status"], first.json()["amount"], first.json()["currency"]) == ("draft", "60000.00", "CNY")
    signed = await post(http, settings, f"/v1/contracts/{first.json()['id']}/sign")
    assert signed.status_code == 200, signed.text
    assert signed.json()["status"] == "signed" and signed.json()["signed_by"] == "rep-1"
    problem(await post(http, settings, f"/v1/contracts/{first.json()['id']}/sign"), 409, "signed already")

    second = await post(http, settings, "/v1/contracts", {"opportunity_id": opp["id"], "amount": "50000.00"})
    blocked = await post(http, settings, f"/v1/contracts/{second.json()['id']}/sign")
    problem(blocked, 409, "credit limit of 100000.00 CNY", "110000.00")
    got = await http.get(f"/v1/contracts/{second.json()['id']}", headers=as_(settings, "rep-1"))
    assert got.json()["status"] == "draft"
    third = await post(http, settings, "/v1/contracts", {"opportunity_id": opp["id"], "amount": "40000.00"})
    assert (await post(http, settings, f"/v1/contracts/{third.json()['id']}/sign")).status_code == 200
    problem(await post(http, settings, f"/v1/contracts/{third.json()['id']}/sign", user="rep-2"), 403)

    won = await open_opportunity(http, settings)  # no credit limit on its new account
    await post(http, settings, f"/v1/opportunities/{won['id']}/close", {"outcome": "won", "reason": "fit"})
    free = await post(http, settings, "/v1/contracts", {"opportunity_id": won["id"]})
    assert free.json()["amount"] == "120000.00"
    assert (await post(http, settings, f"/v1/contracts/{free.json()['id']}/sign")).status_code == 200


async def test_the_contract_list_is_scoped_filtered_and_paged(http: httpx.AsyncClient, settings: Settings) -> None:
    account_id = (await post(http, settings, "/v1/accounts", {"name": unique("合同列表客户")})).json()["id"]
    deals = [await open_opportunity(http, settings, account_id=account_id) for _ in range(2)]
    for deal in deals:
        await post(http, settings, f"/v1/opportunities/{deal['id']}/close", {"outcome": "won", "reason": "fit"})
    made = [(await post(http, settings, "/v1/contracts", {"opportunity_id": deal["id"], "amount": amount})).json()
            for deal, amount in [(deals[0], "100.00"), (deals[0], "200.00"), (deals[1], "300.00")]]
    await post(http, settings, f"/v1/contracts/{made[1]['id']}/sign")

    async def listed(user: str, **params: str) -> list[str]:
        got = await http.get("/v1/contracts", params={"account_id": account_id, **params}, headers=as_(settings, user))
        assert got.status_code == 200, got.text
        return [c["id"] for c in got.json()["items"]]

    ids = [c["id"] for c in made]
    assert await listed("rep-1") == ids  # oldest first
    assert await listed("rep-1", status="signed") == [ids[1]]
    assert await listed("rep-1", opportunity_id=deals[0]["id"]) == ids[:2]
    assert await listed("mgr-1") == await listed("dir-1") == await listed("svc-erp") == ids
    assert await listed("rep-2") == [] and await listed("mgr-2") == []  # another rep's and another team's
    page = (await http.get("/v1/contracts", params={"account_id": account_id, "limit": "2"},
                           headers=as_(settings, "rep-1"))).json()
    assert [c["id"] for c in page["items"]] == ids[:2] and page["next_cursor"]
    assert await listed("rep-1", limit="2", cursor=page["next_cursor"]) == ids[2:]
    problem(await http.get("/v1/contracts?status=pending", headers=as_(settings, "rep-1")), 422)


async def test_contracts_are_executed_or_terminated(http: httpx.AsyncClient, settings: Settings) -> None:
    account = await post(http, settings, "/v1/accounts", {"name": unique("履约客户"), "credit_limit": "1000"},
                         user="mgr-1")
    opp = await open_opportunity(http, settings, account_id=account.json()["id"], amount="1000.00")
    await post(http, settings, f"/v1/opportunities/{opp['id']}/close", {"outcome": "won", "reason": "fit"})
    first = (await post(http, settings, "/v1/contracts", {"opportunity_id": opp["id"]})).json()
    problem(await post(http, settings, f"/v1/contracts/{first['id']}/execute"), 409, "only a signed")
    await post(http, settings, f"/v1/contracts/{first['id']}/sign")
    second = (await post(http, settings, "/v1/contracts", {"opportunity_id": opp["id"], "amount": "500"})).json()
    problem(await post(http, settings, f"/v1/contracts/{second['id']}/sign"), 409, "credit limit")
    executed = await post(http, settings, f"/v1/contracts/{first['id']}/execute")
    assert (executed.json()["status"], executed.json()["version"]) == ("executed", 3)
    assert (await post(http, settings, f"/v1/contracts/{second['id']}/sign")).status_code == 200  # credit released
    problem(await post(http, settings, f"/v1/contracts/{second['id']}/terminate", {}), 422, "reason")
    ended = await post(http, settings, f"/v1/contracts/{second['id']}/terminate", {"reason": "customer withdrew"})
    assert (ended.json()["status"], ended.json()["termination_reason"]) == ("terminated", "customer withdrew")
    for action in ("sign", "execute"):
        problem(await post(http, settings, f"/v1/contracts/{second['id']}/{action}"), 409, "terminated")
    events = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.contracts", count=3, match=second["id"].encode())]
    assert [(e.type, e.sequence) for e in events] == [("sales.contract.created.v1", 1), ("sales.contract.signed.v1", 2),
                                                      ("sales.contract.terminated.v1", 3)]
    assert events[2].data["was_signed"] is True and events[2].data["terminated_by"] == "rep-1"
    [_, _, done] = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.contracts", count=3, match=first["id"].encode())]
    assert (done.type, done.sequence, done.data["executed_by"]) == ("sales.contract.executed.v1", 3, "rep-1")


async def test_a_drawn_up_contract_is_announced_from_the_transaction_of_its_insert(
    http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool, db: Database, producer: AIOKafkaProducer
) -> None:
    opp = await open_opportunity(http, settings, campaign_id="cmp-contracts")
    announced = ("SELECT count(*) FROM outbox WHERE type = 'sales.contract.created.v1'"
                 " AND payload -> 'data' ->> 'opportunity_id' = $1")
    problem(await post(http, settings, "/v1/contracts", {"opportunity_id": opp["id"]}), 409, "contract stage")
    await post(http, settings, f"/v1/opportunities/{opp['id']}/stage", {"stage": "contract"})
    problem(await post(http, settings, "/v1/contracts", {"opportunity_id": opp["id"]}, user="rep-2"), 403)
    assert await tables.fetchval("SELECT count(*) FROM contracts WHERE opportunity_id = $1", opp["id"]) == 0
    assert await tables.fetchval(announced, opp["id"]) == 0  # refused: no contract, no event

    created = await post(http, settings, "/v1/contracts", {"opportunity_id": opp["id"], "amount": "99000.50",
                                                            "currency": "USD"})
    assert created.status_code == 201, created.text
    contract = created.json()
    assert (contract["status"], contract["version"]) == ("draft", 1)
    [record] = await read_topic(settings, "sales.contracts", count=1, match=contract["id"].encode())
    event = parse_and_validate(record.value)
    assert (event.type, event.subject, event.sequence) == ("sales.contract.created.v1", contract["id"], 1)
    assert event.data == {
        "contract_id": contract["id"], "opportunity_id": opp["id"], "account_id": opp["account_id"],
        "amount": "99000.50", "currency": "USD", "owner_id": "rep-1", "campaign_id": "cmp-contracts",
        "status": "draft", "created_by": "rep-1",
        "created_at": datetime.fromisoformat(contract["created_at"]).isoformat().replace("+00:00", "Z"),
    }
    # One transaction: now() is its start, the default of both rows' created_at.
    inserted, written = await tables.fetchrow(
        "SELECT c.created_at, o.created_at FROM contracts c JOIN outbox o ON o.aggregateid = c.id WHERE c.id = $1",
        contract["id"])
    assert inserted == written and await tables.fetchval(announced, opp["id"]) == 1

    # The other readers of sales.contracts: scoring and forecasting have no use for a draft and ignore it (not
    # dead-lettered); notifications routes it to the webhooks and rules that name it.
    consumed = Message(record.topic, record.partition, record.offset, record.key, record.value, tuple(record.headers))
    for name, handlers in (("scoring", scoring.HANDLERS), ("forecasting", forecasting.HANDLERS)):
        processor = EventProcessor(db, f"funnelcast-{name}", handlers, DeadLetters(producer, f"funnelcast-{name}"))
        assert await processor.process(consumed) is Outcome.IGNORED, name
    assert notifications.HANDLERS[event.type] is notifications.on_event


# --- events -------------------------------------------------------------------------------


async def test_every_event_validates_with_a_per_aggregate_sequence(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings)
    path = f"/v1/opportunities/{opp['id']}"
    for action, body in [("stage", {"stage": "bidding"}), ("suspend", {"reason": "budget"}), ("reactivate", {}),
                         ("stage", {"stage": "contract"})]:
        assert (await post(http, settings, f"{path}/{action}", body)).status_code == 200
    contract = (await post(http, settings, "/v1/contracts", {"opportunity_id": opp["id"]})).json()
    await post(http, settings, f"/v1/contracts/{contract['id']}/sign")
    assert (await post(http, settings, f"{path}/close", {"outcome": "won", "reason": "signed"})).status_code == 200

    records = await read_topic(settings, "sales.opportunities", count=6, match=opp["id"].encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [e.type.split(".")[2] for e in events] == [
        "created", "stage_changed", "suspended", "reactivated", "stage_changed", "won"]
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6]
    assert all(e.subject == opp["id"] and e.source == "/funnelcast/opportunities" for e in events)
    assert all(("content-type", b"application/cloudevents+json") in r.headers for r in records)
    created, moved = events[0].data, events[1].data
    assert (created["amount"], created["probability"], created["lead_id"]) == ("120000.00", 10, None)
    assert (moved["from_stage"], moved["to_stage"], moved["probability"], moved["changed_by"]) == (
        "prospecting", "bidding", 30, "rep-1")
    assert events[5].data["stage"] == "contract" and events[5].data["closed_by"] == "rep-1"

    [_, signed] = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.contracts", count=2, match=contract["id"].encode())]
    assert (signed.type, signed.sequence, signed.data["amount"]) == ("sales.contract.signed.v1", 2, "120000.00")
    assert signed.data["opportunity_id"] == opp["id"] and signed.data["account_id"] == opp["account_id"]
    [account] = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.accounts", count=1, match=opp["account_id"].encode())]
    assert (account.type, account.sequence) == ("sales.account.created.v1", 1)


async def test_lost_events_name_the_competitor(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings)
    closing = {"outcome": "lost", "reason": "price", "competitor": "Acme"}
    await post(http, settings, f"/v1/opportunities/{opp['id']}/close", closing)
    opp2 = await open_opportunity(http, settings)
    await post(http, settings, f"/v1/opportunities/{opp2['id']}/terminate", {"reason": "cancelled"})
    [_, lost] = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.opportunities", count=2, match=opp["id"].encode())]
    assert (lost.type, lost.data["competitor"], lost.data["reason"], lost.sequence) == (
        "sales.opportunity.lost.v1", "Acme", "price", 2)
    [_, terminated] = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.opportunities", count=2, match=opp2["id"].encode())]
    assert (terminated.type, terminated.data["reason"], terminated.data["by"]) == (
        "sales.opportunity.terminated.v1", "cancelled", "rep-1")


# --- lead conversion ----------------------------------------------------------------------


def converted(lead_id: str, account_name: str, **changes: Any) -> CloudEvent:
    data = {
        "lead_id": lead_id,
        "contact": {"name": "张伟", "company": account_name, "phone": "+86 138 0000 0000", "email": "zw@example.com"},
        "account_name": account_name,
        "account_id": None,
        "owner_id": "rep-1",
        "region": "华东",
        "campaign_id": "cmp-9",
        "source": "web_form",
        "grade": "A",
        "opportunity": {"name": f"{account_name} 项目", "amount": "88000.00", "currency": "CNY",
                        "expected_close_date": "2027-01-31"},
        "converted_by": "rep-1",
        "converted_at": "2026-11-23T08:00:00Z",
        **changes,
    }
    return CloudEvent(
        type="sales.lead.converted.v1", source="/funnelcast/leads", subject=lead_id, data=data, sequence=5
    )


async def send(producer: AIOKafkaProducer, event: CloudEvent, key: str) -> None:
    await producer.send_and_wait("sales.leads", event.to_bytes(), key=key.encode(), headers=[CONTENT_TYPE_HEADER])


async def test_a_converted_lead_is_applied_once_under_redelivery(
    http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    existing = await post(http, settings, "/v1/accounts", {"name": unique("Lead Linked Co., Ltd.")})
    linked_name = existing.json()["name"].upper().replace(", ", " ")  # the same company, spelled otherwise
    lead, sentinel = f"lead-{uuid.uuid4()}", f"lead-{uuid.uuid4()}"
    event = converted(lead, linked_name)
    await send(producer, event, lead)
    await send(producer, event, lead)  # redelivery: the same event id
    await send(producer, converted(lead, linked_name), lead)  # another event for the same lead
    # Same key, so same partition: once the sentinel is applied, everything before it was processed.
    await send(producer, converted(sentinel, unique("Sentinel Co")), lead)

    async def sentinel_applied() -> bool:
        return bool(await tables.fetchval("SELECT 1 FROM opportunities WHERE lead_id = $1", sentinel))

    await eventually(sentinel_applied, timeout=30)
    rows = await tables.fetch("SELECT * FROM opportunities WHERE lead_id = $1", lead)
    assert len(rows) == 1
    opp = rows[0]
    assert opp["account_id"] == existing.json()["id"]
    assert (opp["stage"], opp["status"], str(opp["amount"]), opp["owner_id"]) == ("prospecting", "open", "88000.00",
                                                                               "rep-1")
    assert (opp["campaign_id"], opp["region"], str(opp["expected_close_date"])) == ("cmp-9", "华东", "2027-01-31")
    contacts = await tables.fetch("SELECT * FROM contacts WHERE lead_id = $1", lead)
    assert len(contacts) == 1 and contacts[0]["id"] == opp["contact_id"]
    assert contacts[0]["account_id"] == opp["account_id"] and contacts[0]["name"] == "张伟"
    applied = await tables.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", event.id)
    assert applied == 1

    got = await http.get(f"/v1/opportunities/{opp['id']}", headers=as_(settings, "rep-1"))
    assert got.json()["lead_id"] == lead
    [created] = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.opportunities", count=1, match=opp["id"].encode())]
    assert (created.type, created.data["lead_id"], created.data["contact_id"]) == (
        "sales.opportunity.created.v1", lead, opp["contact_id"])
    assert created.causationid == event.id  # the lead event caused it
    [contact] = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.accounts", count=1, match=opp["contact_id"].encode())]
    assert (contact.type, contact.data["lead_id"], contact.data["phone"], contact.data["created_by"]) == (
        "sales.contact.created.v1", lead, "+8613800000000", "rep-1")


async def test_a_converted_lead_with_a_new_company_creates_the_account(
    settings: Settings, tables: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    lead, name = f"lead-{uuid.uuid4()}", unique("新公司")
    await send(producer, converted(lead, name, opportunity={"name": "n", "amount": None, "currency": "USD",
                                                             "expected_close_date": None}), lead)

    async def opened() -> asyncpg.Record | None:
        row: asyncpg.Record | None = await tables.fetchrow("SELECT * FROM opportunities WHERE lead_id = $1", lead)
        return row

    opp = await eventually(opened, timeout=30)
    assert (str(opp["amount"]), opp["currency"], opp["expected_close_date"]) == ("0.00", "USD", None)
    account = await tables.fetchrow("SELECT * FROM accounts WHERE id = $1", opp["account_id"])
    assert (account["name"], account["lead_id"], account["owner_id"]) == (name, lead, "rep-1")
    [created] = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.accounts", count=1, match=account["id"].encode())]
    assert created.data["lead_id"] == lead and created.sequence == 1
