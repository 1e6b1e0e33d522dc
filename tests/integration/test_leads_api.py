"""The leads service over HTTP against the session's real Postgres and Tansu: capture, duplicates,
round robin under concurrency, the lifecycle, scope, validation and the events on sales.leads."""

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from services.leads.main import service
from shared.auth import issue_token
from shared.events.envelope import parse_and_validate
from shared.org import Role
from shared.service import create_service_app
from shared.settings import Settings
from tests.support.topics import read_topic

ROLES = {
    "rep-1": Role.REP,
    "rep-2": Role.REP,
    "rep-3": Role.REP,
    "mgr-1": Role.MANAGER,
    "mgr-2": Role.MANAGER,
    "dir-1": Role.DIRECTOR,
    "admin-1": Role.ADMIN,
    "svc-erp": Role.INTEGRATION,
}
_numbers = itertools.count(1)


def fresh_phone() -> str:
    """A valid, never-used Chinese mobile number, written the way people type it."""
    n = next(_numbers) + (uuid.uuid4().int % 10_000) * 10_000
    return f"139 {n // 10_000 % 10_000:04d} {n % 10_000:04d}"


def fresh_email() -> str:
    return f"Buyer.{uuid.uuid4().hex[:10]}@Example.CN"


@pytest.fixture(scope="module")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(service, settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


@pytest.fixture(scope="module")
async def leads_db(settings: Settings, client: httpx.AsyncClient) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url_for("leads"))
    yield conn
    await conn.close()


def auth(settings: Settings, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(user, ROLES[user], settings.signing_secret, 600)}"}


def lead_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "contact": {"name": "王伟", "company": "  上海星河科技有限公司 ", "phone": fresh_phone(), "email": None},
        "source": "web_form",
        "grade": "H",
        "region": "华东",
        "attributes": {"utm_source": "baidu", "landing_page": "/pricing"},
    }
    body.update(overrides)
    return body


async def capture(client: httpx.AsyncClient, settings: Settings, user: str = "admin-1", **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/leads", json=lead_body(**body), headers=auth(settings, user))
    assert response.status_code == 201, response.text
    return response.json()


async def outbox_types(conn: asyncpg.Connection, lead_id: str) -> list[str]:
    rows = await conn.fetch("SELECT type FROM outbox WHERE aggregateid = $1 ORDER BY position", lead_id)
    return [r["type"] for r in rows]


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


async def test_capture_answers_the_normalised_graded_assigned_lead(client, settings):
    phone = fresh_phone()
    response = await client.post(
        "/v1/leads",
        json=lead_body(contact={"name": " 王伟 ", "company": "  星河  科技 ", "phone": phone, "email": "Wang@XH.cn"}),
        headers=auth(settings, "admin-1"),
    )
    assert response.status_code == 201, response.text
    lead = response.json()
    assert lead["id"] and lead["status"] == "new" and lead["grade"] == "H"
    assert lead["contact"] == {
        "name": "王伟",
        "company": "星河 科技",
        "phone": "+86" + phone.replace(" ", ""),
        "email": "wang@xh.cn",
    }
    assert lead["owner_id"] in {"rep-1", "rep-2"} and lead["team"] == "east"
    assert lead["version"] == 2
    captured = lead["captured_at"]
    assert lead["follow_up_due_at"] > captured
    again = await client.get(f"/v1/leads/{lead['id']}", headers=auth(settings, lead["owner_id"]))
    assert again.status_code == 200 and again.json() == lead


async def test_the_lifecycle_publishes_valid_events_in_sequence(client, settings, leads_db):
    lead = await capture(client, settings, owner_id="rep-1", grade="A")
    rep = auth(settings, "rep-1")
    lid = lead["id"]
    touch = {"channel": "sms", "note": "发送了产品资料"}
    touched = await client.post(f"/v1/leads/{lid}/touches", json=touch, headers=rep)
    assert touched.status_code == 201, touched.text
    assert touched.json()["lead"]["status"] == "contacted"
    assert touched.json()["lead"]["first_response_at"] is not None
    assert touched.json()["touch"]["number"] == 1
    second = await client.post(f"/v1/leads/{lid}/touches", json={"channel": "phone"}, headers=rep)
    assert second.json()["touch"]["number"] == 2 and second.json()["lead"]["status"] == "contacted"
    engaged = await client.post(
        f"/v1/leads/{lid}/engagement",
        json={"visits": 4, "time_on_site_s": 612.5, "page_views": 17, "activity": "webinar_attended"},
        headers=auth(settings, "svc-erp"),
    )
    assert engaged.status_code == 200, engaged.text
    qualified = await client.post(f"/v1/leads/{lid}/qualify", json={"note": "预算已落实"}, headers=rep)
    assert qualified.status_code == 200 and qualified.json()["status"] == "qualified"
    converted = await client.post(
        f"/v1/leads/{lid}/convert",
        json={"opportunity": {"name": "星河 CRM 项目", "amount": "380000.00", "expected_close_date": "2027-01-31"}},
        headers=rep,
    )
    assert converted.status_code == 200, converted.text
    assert converted.json()["status"] == "converted" and converted.json()["version"] == 7

    records = await read_topic(settings, "sales.leads", count=7, match=lid.encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [e.type for e in events] == [
        "sales.lead.captured.v1",
        "sales.lead.assigned.v1",
        "sales.lead.contacted.v1",
        "sales.lead.contacted.v1",
        "sales.lead.engaged.v1",
        "sales.lead.qualified.v1",
        "sales.lead.converted.v1",
    ]
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6, 7]
    assert all(e.subject == lid for e in events)
    assert {r.partition for r in records} == {records[0].partition}  # keyed by lead id
    captured = events[0].data
    assert captured["grade"] == "A" and captured["owner_id"] == "rep-1"
    assert captured["attributes"] == {"utm_source": "baidu", "landing_page": "/pricing"}
    assert events[1].data["method"] == "explicit"
    conversion = events[-1].data
    assert conversion["account_name"] == "上海星河科技有限公司"
    assert conversion["owner_id"] == "rep-1" and conversion["region"] == "华东"
    assert conversion["opportunity"] == {
        "name": "星河 CRM 项目", "amount": "380000.00", "currency": "CNY", "expected_close_date": "2027-01-31",
    }
    assert conversion["contact"]["phone"] == lead["contact"]["phone"]


async def test_refused_requests_change_nothing_and_publish_nothing(client, settings, leads_db):
    lead = await capture(client, settings, owner_id="rep-2")
    lid = lead["id"]
    rep = auth(settings, "rep-2")
    qualify_new = await client.post(f"/v1/leads/{lid}/qualify", headers=rep)
    body = assert_problem(qualify_new, 409)
    assert "can only become contacted, disqualified" in body["detail"]
    assert_problem(await client.post(f"/v1/leads/{lid}/convert", headers=rep), 409)
    no_reason = await client.post(f"/v1/leads/{lid}/disqualify", json={"reason": "  "}, headers=rep)
    assert "reason" in assert_problem(no_reason, 422)["detail"]
    bad_touch = await client.post(f"/v1/leads/{lid}/touches", json={"channel": "pigeon"}, headers=rep)
    assert "channel" in assert_problem(bad_touch, 422)["detail"]
    other_rep = auth(settings, "rep-1")
    assert_problem(await client.post(f"/v1/leads/{lid}/touches", json={"channel": "sms"}, headers=other_rep), 404)
    rep_engagement = await client.post(
        f"/v1/leads/{lid}/engagement", json={"visits": 1, "time_on_site_s": 1, "page_views": 1}, headers=rep
    )
    assert_problem(rep_engagement, 403)

    assert await outbox_types(leads_db, lid) == ["sales.lead.captured.v1", "sales.lead.assigned.v1"]
    stored = await client.get(f"/v1/leads/{lid}", headers=rep)
    assert stored.json()["status"] == "new" and stored.json()["version"] == 2 and stored.json()["touch_count"] == 0

    disqualified = await client.post(f"/v1/leads/{lid}/disqualify", json={"reason": "no_budget"}, headers=rep)
    assert disqualified.status_code == 200 and disqualified.json()["disqualify_reason"] == "no_budget"
    closed = await client.post(f"/v1/leads/{lid}/touches", json={"channel": "sms"}, headers=rep)
    assert "closed" in assert_problem(closed, 409)["detail"]
    records = await read_topic(settings, "sales.leads", count=3, match=lid.encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [(e.type, e.sequence) for e in events] == [
        ("sales.lead.captured.v1", 1),
        ("sales.lead.assigned.v1", 2),
        ("sales.lead.disqualified.v1", 3),
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"contact": {"name": "", "phone": "13800138000"}}, "contact.name"),
        ({"contact": {"name": "王伟", "phone": "12345"}}, "contact.phone"),
        ({"contact": {"name": "王伟", "email": "not-an-email"}}, "contact.email"),
        ({"contact": {"name": "王伟"}}, "contact"),
        ({"grade": "Z"}, "grade"),
        ({"source": "carrier_pigeon"}, "source"),
        ({"attributes": {"utm": 3}}, "attributes.utm"),
        ({"owner_id": "nobody"}, "owner_id"),
    ],
)
async def test_an_invalid_field_is_a_422_naming_it_and_creates_nothing(client, settings, leads_db, change, field):
    before = await leads_db.fetchval("SELECT count(*) FROM outbox")
    response = await client.post("/v1/leads", json=lead_body(**change), headers=auth(settings, "admin-1"))
    body = assert_problem(response, 422)
    assert field in body["detail"], body
    assert await leads_db.fetchval("SELECT count(*) FROM outbox") == before


async def test_a_duplicate_by_phone_or_email_names_the_existing_lead_and_is_noted_on_it(client, settings, leads_db):
    phone, email = fresh_phone(), fresh_email()
    first = await capture(client, settings, contact={"name": "王伟", "phone": phone, "email": email})
    before = await leads_db.fetchval("SELECT count(*) FROM outbox")
    # the same phone written differently, a new e-mail
    by_phone = await client.post(
        "/v1/leads",
        json=lead_body(contact={"name": "王先生", "phone": "+86-" + phone.replace(" ", "-"), "email": fresh_email()}),
        headers=auth(settings, "admin-1"),
    )
    assert by_phone.status_code == 200, by_phone.text
    assert by_phone.json()["duplicate_of"] == first["id"] == by_phone.json()["id"]
    assert by_phone.json()["matched_on"] == ["phone"]
    # the same e-mail in other case, no phone
    by_email = await client.post(
        "/v1/leads",
        json=lead_body(contact={"name": "王伟", "email": email.upper()}, source="email"),
        headers=auth(settings, "admin-1"),
    )
    assert by_email.status_code == 200 and by_email.json()["duplicate_of"] == first["id"]
    assert by_email.json()["matched_on"] == ["email"]
    others = "SELECT count(*) FROM leads WHERE id <> $1 AND (email = $2 OR phone = $3)"
    assert await leads_db.fetchval(others, first["id"], email.lower(), first["contact"]["phone"]) == 0
    notes = await leads_db.fetch("SELECT kind, body FROM lead_notes WHERE lead_id = $1", first["id"])
    assert [n["kind"] for n in notes] == ["duplicate_capture", "duplicate_capture"]
    assert await leads_db.fetchval("SELECT count(*) FROM outbox") == before  # a duplicate publishes nothing


async def test_parallel_duplicates_still_make_one_lead(client, settings, leads_db):
    phone = fresh_phone()
    responses = await asyncio.gather(
        *(
            client.post(
                "/v1/leads", json=lead_body(contact={"name": "王伟", "phone": phone}), headers=auth(settings, "admin-1")
            )
            for _ in range(8)
        )
    )
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1


async def test_twenty_parallel_captures_for_a_region_are_spread_evenly_by_round_robin(client, settings, leads_db):
    team = "east"  # 华东's team in the organisation file: rep-1, rep-2
    turns_before = await leads_db.fetchval("SELECT coalesce(max(turns), 0) FROM assignment_cursors WHERE team = $1",
                                           team)
    responses = await asyncio.gather(
        *(client.post("/v1/leads", json=lead_body(region="华东"), headers=auth(settings, "admin-1")) for _ in range(20))
    )
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses if r.status_code != 201]
    owners = [r.json()["owner_id"] for r in responses]
    assert owners.count("rep-1") == 10 and owners.count("rep-2") == 10
    # each capture took one turn of the team, none lost or shared
    assert await leads_db.fetchval("SELECT turns FROM assignment_cursors WHERE team = $1", team) == turns_before + 20
    ids = [r.json()["id"] for r in responses]
    assigned = await read_topic(settings, "sales.leads", count=20 * 2, timeout=30)
    by_lead = [parse_and_validate(r.value) for r in assigned if r.key.decode() in ids]
    assert {e.data["method"] for e in by_lead if e.type == "sales.lead.assigned.v1"} == {"round_robin"}


async def test_each_role_sees_its_own_scope(client, settings):
    mine = await capture(client, settings, owner_id="rep-1")
    north = await capture(client, settings, region="华北")
    assert north["owner_id"] == "rep-3"
    lid = mine["id"]
    for user, status in [("rep-1", 200), ("rep-2", 404), ("mgr-1", 200), ("mgr-2", 404), ("dir-1", 200),
                         ("admin-1", 200), ("svc-erp", 200)]:
        response = await client.get(f"/v1/leads/{lid}", headers=auth(settings, user))
        assert response.status_code == status, (user, response.text)
    assert (await client.get(f"/v1/leads/{lid}")).status_code == 401
    listed = await client.get("/v1/leads", params={"limit": 500}, headers=auth(settings, "rep-3"))
    assert listed.status_code == 200
    assert {item["owner_id"] for item in listed.json()["items"]} == {"rep-3"}
    team = await client.get("/v1/leads", params={"limit": 500}, headers=auth(settings, "mgr-1"))
    assert {item["owner_id"] for item in team.json()["items"]} <= {"rep-1", "rep-2", "mgr-1"}
    assert lid in {item["id"] for item in team.json()["items"]}


async def test_a_rep_capturing_without_a_region_owns_the_lead_and_may_not_give_it_away(client, settings):
    lead = await capture(client, settings, user="rep-2", region=None)
    assert lead["owner_id"] == "rep-2"
    response = await client.post("/v1/leads", json=lead_body(owner_id="rep-3"), headers=auth(settings, "rep-2"))
    assert_problem(response, 403)


async def test_listing_filters_and_pages_with_a_cursor(client, settings):
    fair = {"name": "秋季展会", "channel": "event", "budget": "50000"}
    planned = await client.post("/v1/campaigns", json=fair, headers=auth(settings, "mgr-1"))
    assert planned.status_code == 201, planned.text
    campaign = planned.json()["id"]
    admin = auth(settings, "admin-1")
    unknown = await client.post("/v1/leads", json=lead_body(campaign_id="cmp-nope"), headers=admin)
    assert "campaign_id" in assert_problem(unknown, 422)["detail"]
    made = [await capture(client, settings, campaign_id=campaign, grade=g, source="event") for g in "HABCH"]
    dir_ = auth(settings, "dir-1")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"campaign_id": campaign, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/leads", params=params, headers=dir_)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [lead["id"] for lead in reversed(made)]
    graded = await client.get("/v1/leads", params={"campaign_id": campaign, "grade": "H"}, headers=dir_)
    assert {item["id"] for item in graded.json()["items"]} == {made[0]["id"], made[4]["id"]}
    none = await client.get("/v1/leads", params={"campaign_id": campaign, "source": "phone"}, headers=dir_)
    assert none.json()["items"] == []
    window = await client.get(
        "/v1/leads",
        params={
            "campaign_id": campaign, "captured_from": made[2]["captured_at"], "captured_to": made[4]["captured_at"],
        },
        headers=dir_,
    )
    assert [item["id"] for item in window.json()["items"]] == [made[3]["id"], made[2]["id"]]
    assert_problem(await client.get("/v1/leads", params={"status": "lost"}, headers=dir_), 422)
    assert_problem(await client.get("/v1/leads", params={"cursor": "garbage"}, headers=dir_), 422)


async def test_a_grade_change_restarts_the_follow_up_and_is_an_event(client, settings, leads_db):
    lead = await capture(client, settings, owner_id="rep-1", grade="C")
    lid, rep = lead["id"], auth(settings, "rep-1")
    upgraded = await client.post(f"/v1/leads/{lid}/grade", json={"grade": "H"}, headers=rep)
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.json()["grade"] == "H" and upgraded.json()["follow_up_due_at"] < lead["follow_up_due_at"]
    same = await client.post(f"/v1/leads/{lid}/grade", json={"grade": "H"}, headers=rep)
    assert same.json()["version"] == 3  # no change, no event
    bad = await client.post(f"/v1/leads/{lid}/grade", json={"grade": "Q"}, headers=rep)
    assert "grade" in assert_problem(bad, 422)["detail"]
    records = await read_topic(settings, "sales.leads", count=3, match=lid.encode())
    changed = parse_and_validate(records[-1].value)
    assert changed.type == "sales.lead.grade_changed.v1" and changed.sequence == 3
    assert (changed.data["from_grade"], changed.data["to_grade"]) == ("C", "H")
    assert changed.data["follow_up_due_at"] == upgraded.json()["follow_up_due_at"]


async def test_a_manager_reassigns_within_the_team_and_the_event_names_both_owners(client, settings, leads_db):
    lead = await capture(client, settings, owner_id="rep-1")
    lid = lead["id"]
    manager = auth(settings, "mgr-1")
    path = f"/v1/leads/{lid}/assign"
    assert_problem(await client.post(path, json={"owner_id": "rep-2"}, headers=auth(settings, "rep-1")), 403)
    assert_problem(await client.post(path, json={"owner_id": "rep-3"}, headers=manager), 403)
    assert_problem(await client.post(path, json={"owner_id": "dir-1"}, headers=manager), 422)
    moved = await client.post(path, json={"owner_id": "rep-2", "reason": "rep-1 on leave"}, headers=manager)
    assert moved.status_code == 200, moved.text
    assert moved.json()["owner_id"] == "rep-2" and moved.json()["version"] == 3
    assert (await client.get(f"/v1/leads/{lid}", headers=auth(settings, "rep-1"))).status_code == 404
    assert (await client.get(f"/v1/leads/{lid}", headers=auth(settings, "rep-2"))).status_code == 200
    records = await read_topic(settings, "sales.leads", count=3, match=lid.encode())
    event = parse_and_validate(records[-1].value)
    assert event.type == "sales.lead.assigned.v1" and event.sequence == 3
    owners = (event.data["previous_owner_id"], event.data["owner_id"], event.data["assigned_by"])
    assert owners == ("rep-1", "rep-2", "mgr-1")
    assert event.data["reason"] == "rep-1 on leave"


async def test_merging_by_hand_closes_the_duplicate_and_later_captures_land_on_the_survivor(client, settings):
    company = f"合并测试 {uuid.uuid4().hex[:6]}"
    survivor = await capture(client, settings, owner_id="rep-1", contact={"name": "王伟", "company": company,
                                                                           "phone": fresh_phone()})
    duplicate = await capture(client, settings, owner_id="rep-2", contact={"name": "王 伟", "company": company,
                                                                            "email": fresh_email()})
    sid, did = survivor["id"], duplicate["id"]
    path = f"/v1/leads/{sid}/merge"
    assert_problem(await client.post(path, json={"duplicate_id": did}, headers=auth(settings, "rep-1")), 404)
    assert_problem(await client.post(path, json={"duplicate_id": sid}, headers=auth(settings, "mgr-1")), 422)
    merged = await client.post(path, json={"duplicate_id": did}, headers=auth(settings, "mgr-1"))
    assert merged.status_code == 200, merged.text
    assert merged.json()["id"] == sid and merged.json()["version"] == 3
    closed = (await client.get(f"/v1/leads/{did}", headers=auth(settings, "mgr-1"))).json()
    assert closed["status"] == "merged" and closed["merged_into"] == sid
    again = await client.post(path, json={"duplicate_id": did}, headers=auth(settings, "mgr-1"))
    assert "closed" in assert_problem(again, 409)["detail"]
    # a later capture with the merged lead's e-mail is a duplicate of the survivor
    repeat = await client.post(
        "/v1/leads", json=lead_body(contact={"name": "王伟", "email": duplicate["contact"]["email"]}),
        headers=auth(settings, "admin-1"),
    )
    assert repeat.status_code == 200 and repeat.json()["duplicate_of"] == sid
    records = await read_topic(settings, "sales.leads", count=3, match=sid.encode())
    event = parse_and_validate(records[-1].value)
    assert (event.type, event.sequence) == ("sales.lead.merged.v1", 3)
    assert event.data["merged_lead_id"] == did and event.data["matched_on"] == ["company"]


async def test_a_duplicate_of_a_lead_outside_the_callers_scope_is_named_but_not_shown(client, settings):
    phone = fresh_phone()
    theirs = await capture(client, settings, owner_id="rep-1", contact={"name": "王伟", "phone": phone})
    response = await client.post(
        "/v1/leads", json=lead_body(contact={"name": "王伟", "phone": phone}), headers=auth(settings, "rep-2")
    )
    assert response.status_code == 200
    assert response.json() == {"duplicate_of": theirs["id"], "matched_on": ["phone"]}


async def test_listing_sorts_by_follow_up_due_with_cursors_bound_to_the_sort(client, settings):
    fair = {"name": "排序", "channel": "event", "budget": "1"}
    campaign = (await client.post("/v1/campaigns", json=fair, headers=auth(settings, "mgr-1"))).json()["id"]
    made = [await capture(client, settings, campaign_id=campaign, grade=g) for g in "CHBA"]
    dir_ = auth(settings, "dir-1")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"campaign_id": campaign, "sort": "follow_up_due_at", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/leads", params=params, headers=dir_)).json()
        seen += [item["grade"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        mixed = await client.get(
            "/v1/leads", params={"campaign_id": campaign, "cursor": cursor}, headers=dir_
        )
        assert_problem(mixed, 422)
    assert seen == ["H", "A", "B", "C"]
    newest = await client.get("/v1/leads", params={"campaign_id": campaign, "sort": "captured_at"}, headers=dir_)
    assert [item["id"] for item in newest.json()["items"]] == [lead["id"] for lead in made]
