"""Merging two leads of one person over HTTP against the session's real Postgres and Tansu: the survivor
takes the duplicate's touches, notes, engagements and the details it lacked, the merged lead points at it,
the event says so (validated against its schema), a refused merge changes and publishes nothing, and the
duplicate rule finds the survivor afterwards, also for a capture that raced the merge."""

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx

from shared.events.envelope import parse_and_validate
from shared.settings import Settings
from tests.integration.test_leads_api import (  # the module's app, its database and its helpers
    assert_problem,
    auth,
    capture,
    client,
    fresh_email,
    fresh_phone,
    lead_body,
    leads_db,
)
from tests.support.topics import read_topic
from tests.support.waiting import eventually

__all__ = ["client", "leads_db"]  # fixtures, used by name

DAY_1, DAY_2, DAY_3 = "2026-11-03T02:00:00+00:00", "2026-11-04T03:00:00+00:00", "2026-11-05T04:00:00+00:00"


async def touch(client: httpx.AsyncClient, settings: Settings, lead_id: str, user: str, channel: str, at: str) -> None:
    response = await client.post(f"/v1/leads/{lead_id}/touches", json={"channel": channel, "contacted_at": at},
                                 headers=auth(settings, user))
    assert response.status_code == 201, response.text


async def history(client: httpx.AsyncClient, settings: Settings, lead_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/leads/{lead_id}/history", headers=auth(settings, "mgr-1"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_survivor_takes_the_duplicates_history_and_the_details_it_lacked(client, settings):
    manager = auth(settings, "mgr-1")
    campaign = await client.post("/v1/campaigns", json={"name": "合并展会", "channel": "event", "budget": "1"},
                                 headers=manager)
    cid = campaign.json()["id"]
    survivor = await capture(client, settings, owner_id="rep-1", grade=None, attributes={"utm_source": "baidu"},
                             contact={"name": "王伟", "phone": fresh_phone()})
    email = fresh_email()
    duplicate = await capture(client, settings, owner_id="rep-2", grade="H", campaign_id=cid,
                              attributes={"utm_source": "wechat", "utm_term": "crm"},
                              contact={"name": "王 伟", "company": "星河科技", "phone": fresh_phone(), "email": email})
    sid, did = survivor["id"], duplicate["id"]
    await touch(client, settings, did, "rep-2", "sms", DAY_1)
    await touch(client, settings, sid, "rep-1", "phone", DAY_3)
    await touch(client, settings, did, "rep-2", "visit", DAY_2)
    again = await client.post("/v1/leads", json=lead_body(contact={"name": "王伟", "email": email}), headers=manager)
    assert again.json()["duplicate_of"] == did  # a note on the duplicate
    engagement = {"visits": 3, "time_on_site_s": 240, "page_views": 9}
    engaged = await client.post(f"/v1/leads/{did}/engagement", json=engagement, headers=auth(settings, "svc-erp"))
    assert engaged.status_code == 200, engaged.text

    merged = await client.post(f"/v1/leads/{sid}/merge", json={"duplicate_id": did}, headers=manager)
    assert merged.status_code == 200, merged.text
    lead = (await client.get(f"/v1/leads/{sid}", headers=auth(settings, "rep-1"))).json()
    assert lead == merged.json()
    assert lead["contact"] == {"name": "王伟", "company": "星河科技", "phone": survivor["contact"]["phone"],
                               "email": email.lower()}
    assert (lead["grade"], lead["campaign_id"], lead["owner_id"]) == ("H", cid, "rep-1")
    assert lead["attributes"] == {"utm_source": "baidu", "utm_term": "crm"}
    assert (lead["status"], lead["touch_count"]) == ("contacted", 3)
    assert lead["first_response_at"] == DAY_1 and lead["last_contacted_at"] == DAY_3
    assert lead["follow_up_due_at"] == duplicate["follow_up_due_at"]  # H's 5 days come before ungraded's 7
    assert lead["version"] == 4  # captured, assigned, touched, merged

    told = await history(client, settings, sid)
    assert [(t["number"], t["channel"], t["contacted_at"], t["contacted_by"], t["merged_from"])
            for t in told["touches"]] == [(2, "sms", DAY_1, "rep-2", did), (3, "visit", DAY_2, "rep-2", did),
                                          (1, "phone", DAY_3, "rep-1", None)]
    assert [(n["kind"], n["merged_from"]) for n in told["notes"]] == [("duplicate_capture", did), ("merge", None)]
    note = told["notes"][1]["body"]
    assert note["merged_lead"] == {**duplicate, "status": "contacted", "touch_count": 2, "version": 5,
                                   "first_response_at": DAY_1, "last_contacted_at": DAY_2}  # as it was
    assert note["filled"] == ["contact.company", "contact.email", "grade", "campaign_id", "attributes.utm_term"]
    assert [(e["visits"], e["merged_from"]) for e in told["engagements"]] == [(3, did)]
    assert told["truncated"] is False

    closed = (await client.get(f"/v1/leads/{did}", headers=auth(settings, "rep-2"))).json()
    assert (closed["status"], closed["merged_into"]) == ("merged", sid)
    assert closed["contact"]["email"] is None and closed["contact"]["phone"] == duplicate["contact"]["phone"]
    assert await history(client, settings, did) == {"lead_id": did, "merged_into": sid, "touches": [], "notes": [],
                                                     "engagements": [], "truncated": False}
    counted = await client.get(f"/v1/campaigns/{cid}", headers=manager)
    assert counted.json()["leads"] == 1  # the survivor, which took the campaign; not the merged duplicate too

    records = await read_topic(settings, "sales.leads", count=4, match=sid.encode())
    event = parse_and_validate(records[-1].value)  # validated against sales.lead.merged.v1's schema
    assert (event.type, event.subject, event.sequence) == ("sales.lead.merged.v1", sid, 4)
    data = event.data
    assert (data["merged_lead_id"], data["owner_id"], data["merged_lead_owner_id"]) == (did, "rep-1", "rep-2")
    assert (data["touches_moved"], data["notes_moved"], data["engagements_moved"]) == (2, 1, 1)
    assert data["filled"] == note["filled"] and data["contact"] == lead["contact"]
    assert (data["status"], data["grade"], data["campaign_id"], data["touch_count"]) == ("contacted", "H", cid, 3)
    assert (data["first_response_at"], data["last_contacted_at"]) == (DAY_1, DAY_3)


async def test_a_refused_merge_changes_nothing_and_publishes_nothing(client, settings, leads_db):
    manager = auth(settings, "mgr-1")
    keep = await capture(client, settings, owner_id="rep-1")
    duplicate = await capture(client, settings, owner_id="rep-1", contact={"name": "王伟", "email": fresh_email()})
    await touch(client, settings, duplicate["id"], "rep-1", "sms", DAY_1)
    converted = await capture(client, settings, owner_id="rep-1")
    await touch(client, settings, converted["id"], "rep-1", "phone", DAY_1)
    for step in ("qualify", "convert"):
        assert (await client.post(f"/v1/leads/{converted['id']}/{step}", headers=manager)).status_code == 200
    theirs = await capture(client, settings, owner_id="rep-3")
    ids = [keep["id"], duplicate["id"], converted["id"], theirs["id"]]

    async def state() -> list[Any]:
        return [await leads_db.fetch("SELECT * FROM leads WHERE id = ANY($1::text[]) ORDER BY id", ids),
                await leads_db.fetch("SELECT * FROM lead_touches WHERE lead_id = ANY($1::text[]) ORDER BY id", ids),
                await leads_db.fetch("SELECT * FROM lead_notes WHERE lead_id = ANY($1::text[]) ORDER BY id", ids),
                await leads_db.fetch("SELECT id FROM outbox WHERE aggregateid = ANY($1::text[]) ORDER BY id", ids)]

    before = await state()
    did = duplicate["id"]
    refusals = [
        (keep["id"], keep["id"], "mgr-1", 422, "itself"),
        (converted["id"], did, "mgr-1", 409, "nothing can be merged into it"),
        (did, converted["id"], "mgr-1", 409, "closed"),
        (keep["id"], did, "rep-2", 404, "that you can see"),  # another rep's leads
        (keep["id"], theirs["id"], "mgr-1", 404, "that you can see"),  # another team's lead
        (keep["id"], "no-such-lead", "mgr-1", 404, "that you can see"),
    ]
    for survivor_id, duplicate_id, user, status, detail in refusals:
        response = await client.post(f"/v1/leads/{survivor_id}/merge", json={"duplicate_id": duplicate_id},
                                     headers=auth(settings, user))
        assert detail in assert_problem(response, status)["detail"], (survivor_id, duplicate_id, user)
    assert await state() == before


async def test_captures_after_a_merge_land_on_the_survivor(client, settings, leads_db):
    survivor = await capture(client, settings, owner_id="rep-1", contact={"name": "王伟", "phone": fresh_phone()})
    phone, email = fresh_phone(), fresh_email()
    duplicate = await capture(client, settings, owner_id="rep-1",
                              contact={"name": "王伟", "phone": phone, "email": email})
    sid, did = survivor["id"], duplicate["id"]
    merged = await client.post(f"/v1/leads/{sid}/merge", json={"duplicate_id": did}, headers=auth(settings, "mgr-1"))
    assert merged.json()["contact"]["email"] == email.lower()  # moved; the phone stays on the merged lead

    # the e-mail is the survivor's now, the phone is found on the merged lead, which points at the survivor
    contacts = [{"name": "王伟", "phone": phone}, {"name": "王伟", "email": email}] * 3
    answers = await asyncio.gather(*(
        client.post("/v1/leads", json=lead_body(contact=contact), headers=auth(settings, "admin-1"))
        for contact in contacts))
    assert [(a.status_code, a.json()["duplicate_of"]) for a in answers] == [(200, sid)] * len(contacts)
    assert [a.json()["matched_on"] for a in answers] == [["phone"], ["email"]] * 3
    notes = (await history(client, settings, sid))["notes"]
    assert [n["kind"] for n in notes] == ["merge"] + ["duplicate_capture"] * len(contacts)
    holders = await leads_db.fetch("SELECT id FROM leads WHERE phone = $1 OR email = $2 ORDER BY id",
                                   "+86" + phone.replace(" ", ""), email.lower())
    assert sorted(r["id"] for r in holders) == sorted([sid, did])  # no new lead


async def test_a_capture_that_found_the_duplicate_before_the_merge_notes_on_the_survivor(client, settings, leads_db):
    """The capture finds the duplicate open, the merge commits, then the capture writes its note: it must
    land on the survivor, or the survivor's history misses it. A transaction of the test holds the
    duplicate's row so that the merge queues for it first and the capture's note second."""
    survivor = await capture(client, settings, owner_id="rep-1")
    phone = fresh_phone()
    duplicate = await capture(client, settings, owner_id="rep-1", contact={"name": "王伟", "phone": phone})
    sid, did = survivor["id"], duplicate["id"]
    holder = await asyncpg.connect(settings.database_url_for("leads"))
    try:
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT FROM leads WHERE id = $1 FOR UPDATE", did)

        async def waiting_for_the_row(count: int) -> bool:
            waiting = await leads_db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
            return bool(waiting >= count)

        merging = asyncio.create_task(client.post(f"/v1/leads/{sid}/merge", json={"duplicate_id": did},
                                                  headers=auth(settings, "mgr-1")))
        await eventually(lambda: waiting_for_the_row(1))
        repeat = lead_body(contact={"name": "王伟", "phone": phone})
        capturing = asyncio.create_task(client.post("/v1/leads", json=repeat, headers=auth(settings, "admin-1")))
        await eventually(lambda: waiting_for_the_row(2))
        await hold.rollback()
        merged, captured = await asyncio.gather(merging, capturing)
    finally:
        await holder.close()
    assert merged.status_code == 200, merged.text
    assert captured.status_code == 200 and captured.json()["duplicate_of"] == sid
    assert [n["kind"] for n in (await history(client, settings, sid))["notes"]] == ["merge", "duplicate_capture"]
    assert await leads_db.fetchval("SELECT count(*) FROM lead_notes WHERE lead_id = $1", did) == 0


async def test_a_merge_note_keeps_the_duplicate_readable_even_after_it_gave_up_its_contact(client, settings):
    survivor = await capture(client, settings, owner_id="rep-1", contact={"name": "王伟", "email": fresh_email()})
    phone = fresh_phone()
    duplicate = await capture(client, settings, owner_id="rep-1",
                              contact={"name": "王伟", "phone": phone, "company": f"公司 {uuid.uuid4().hex[:6]}"})
    merged = await client.post(f"/v1/leads/{survivor['id']}/merge", json={"duplicate_id": duplicate["id"]},
                               headers=auth(settings, "mgr-1"))
    assert merged.json()["contact"]["phone"] == duplicate["contact"]["phone"]
    closed = (await client.get(f"/v1/leads/{duplicate['id']}", headers=auth(settings, "rep-1"))).json()
    assert closed["contact"]["phone"] is None and closed["contact"]["email"] is None  # it held only the phone
    note = (await history(client, settings, survivor["id"]))["notes"][-1]
    assert note["kind"] == "merge" and note["body"]["merged_lead"]["contact"] == duplicate["contact"]
    assert note["created_by"] == "mgr-1"


async def test_merging_a_survivor_on_re_points_the_leads_merged_into_it(client, settings, leads_db):
    first, second, last = [await capture(client, settings, owner_id="rep-1") for _ in range(3)]
    manager = auth(settings, "mgr-1")
    for survivor, duplicate in ((second, first), (last, second)):
        merged = await client.post(f"/v1/leads/{survivor['id']}/merge", json={"duplicate_id": duplicate["id"]},
                                   headers=manager)
        assert merged.status_code == 200, merged.text
    pointers = await leads_db.fetch("SELECT id, merged_into FROM leads WHERE id = ANY($1::text[])",
                                    [first["id"], second["id"]])
    assert {r["id"]: r["merged_into"] for r in pointers} == {first["id"]: last["id"], second["id"]: last["id"]}
    # the first lead kept its phone (each survivor had one): an import and a capture with it name the last
    csv = f"name,phone\n王伟,{first['contact']['phone']}\n".encode()
    imported = await client.post("/v1/leads/import", content=csv, headers={**manager, "Content-Type": "text/csv"})
    assert imported.json()["duplicate_lines"] == [{"line": 2, "lead_id": last["id"]}]
    again = await client.post("/v1/leads", json=lead_body(contact={"name": "王伟", "phone": first["contact"]["phone"]}),
                              headers=manager)
    assert again.json()["duplicate_of"] == last["id"]
    notes = (await history(client, settings, last["id"]))["notes"]
    assert [(n["kind"], n["merged_from"]) for n in notes] == [("merge", second["id"]), ("merge", None),
                                                              ("duplicate_capture", None)]


async def test_a_long_history_answers_its_first_500_of_a_kind_and_says_it_is_truncated(client, settings, leads_db):
    lead = await capture(client, settings, owner_id="rep-1")
    await leads_db.executemany(
        "INSERT INTO lead_notes (id, lead_id, kind, body, created_at) VALUES ($1, $2, 'duplicate_capture', '{}',"
        " now() + make_interval(secs => $3))", [(str(uuid.uuid4()), lead["id"], n) for n in range(501)])
    told = await history(client, settings, lead["id"])
    assert (len(told["notes"]), told["truncated"]) == (500, True)
    assert told["notes"] == sorted(told["notes"], key=lambda note: note["created_at"])
    await leads_db.execute("DELETE FROM lead_notes WHERE id = $1", told["notes"][-1]["id"])
    assert (await history(client, settings, lead["id"]))["truncated"] is False
