"""An account's contacts through the opportunities service's HTTP API against the session's real Postgres and
Tansu: contacts created, listed, read, changed (412 when stale) and archived (409 while an open deal names
them), normalised and unique per account, who may write them, every contact event against its schema; a
converted lead's person linked to the contact the account knows by phone or e-mail."""

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer

from shared.events.envelope import parse_and_validate
from shared.settings import Settings
from tests.integration import test_opportunities_api
from tests.integration.test_opportunities_api import as_, converted, open_opportunity, post, problem, send, unique
from tests.support.topics import read_topic
from tests.support.waiting import eventually

http = test_opportunities_api.http  # the service app in-process, one for this module too
tables = test_opportunities_api.tables


def mobile() -> str:
    """A Chinese mobile number of this test's own, in the national form a person types."""
    return f"139 {uuid.uuid4().int % 10**8:08d}"


async def new_account(http: httpx.AsyncClient, settings: Settings, owner: str | None = "rep-1") -> dict[str, Any]:
    body = {"name": unique("联系人客户"), **({"owner_id": owner} if owner else {})}
    response = await http.post("/v1/accounts", json=body, headers=as_(settings, "admin-1"))
    assert response.status_code == 201, response.text
    return dict(response.json())


async def add_contact(http: httpx.AsyncClient, settings: Settings, account_id: str, user: str = "rep-1",
                      **body: Any) -> httpx.Response:
    return await post(http, settings, f"/v1/accounts/{account_id}/contacts", {"name": unique("李娜"), **body}, user)


async def patch(http: httpx.AsyncClient, settings: Settings, path: str, body: dict[str, Any], user: str = "rep-1",
                **headers: str) -> httpx.Response:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return await http.patch(path, json=body, headers={**as_(settings, user), **named})


async def delete(http: httpx.AsyncClient, settings: Settings, path: str, user: str = "rep-1",
                 **headers: str) -> httpx.Response:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return await http.delete(path, headers={**as_(settings, user), **named})


async def test_a_contact_is_created_normalised_and_read_by_anyone(http: httpx.AsyncClient, settings: Settings
                                                                  ) -> None:
    account = await new_account(http, settings)
    phone = mobile()
    created = await add_contact(http, settings, account["id"], title=" 采购经理 ", role="decision_maker",
                                phone=phone, email=" Li.Na@XingHe.CN ", is_primary=True)
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["etag"] == '"1"' and created.headers["location"] == f"/v1/contacts/{body['id']}"
    assert (body["account_id"], body["title"], body["role"], body["is_primary"]) == (
        account["id"], "采购经理", "decision_maker", True)
    assert (body["phone"], body["email"]) == ("+86" + phone.replace(" ", ""), "li.na@xinghe.cn")
    assert (body["created_by"], body["version"], body["archived_at"]) == ("rep-1", 1, None)
    for reader in ("rep-2", "rep-3", "svc-erp"):  # contacts are read as accounts are: by everyone
        got = await http.get(f"/v1/contacts/{body['id']}", headers=as_(settings, reader))
        assert got.status_code == 200 and got.json() == body
    problem(await add_contact(http, settings, account["id"], phone="12345", email="li.na"), 422, "phone:", "email:")
    problem(await add_contact(http, settings, account["id"], role="boss"), 422, "role")
    problem(await add_contact(http, settings, "acc-missing"), 404, "acc-missing")
    problem(await http.get("/v1/contacts/con-missing", headers=as_(settings, "rep-1")), 404)


async def test_contacts_are_written_in_the_account_owners_scope(http: httpx.AsyncClient, settings: Settings
                                                                ) -> None:
    account = await new_account(http, settings, owner="rep-1")
    problem(await add_contact(http, settings, account["id"], user="rep-2"), 403, "rep-1")  # another rep
    problem(await add_contact(http, settings, account["id"], user="mgr-2"), 403)  # another team's manager
    for writer in ("rep-1", "mgr-1", "dir-1", "admin-1", "svc-erp"):
        assert (await add_contact(http, settings, account["id"], user=writer)).status_code == 201
    contact = (await add_contact(http, settings, account["id"])).json()
    problem(await patch(http, settings, f"/v1/contacts/{contact['id']}", {"title": "x"}, user="rep-3"), 403)
    problem(await delete(http, settings, f"/v1/contacts/{contact['id']}", user="rep-2"), 403)
    ownerless = await new_account(http, settings, owner=None)  # as changing such an account: anyone
    assert (await add_contact(http, settings, ownerless["id"], user="rep-3")).status_code == 201


async def test_a_phone_or_email_taken_in_the_account_is_refused_naming_the_contact(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    account = await new_account(http, settings)
    phone, email = mobile(), f"{uuid.uuid4().hex[:10]}@xinghe.cn"
    first = (await add_contact(http, settings, account["id"], phone=phone, email=email)).json()
    problem(await add_contact(http, settings, account["id"], phone="+86 " + phone), 409, first["id"], "phone")
    problem(await add_contact(http, settings, account["id"], email=email.upper()), 409, first["id"], "e-mail")
    other = await new_account(http, settings)  # another company's contact may share them
    assert (await add_contact(http, settings, other["id"], phone=phone, email=email)).status_code == 201
    second = (await add_contact(http, settings, account["id"], phone=mobile())).json()
    problem(await patch(http, settings, f"/v1/contacts/{second['id']}", {"email": email}), 409, first["id"])


async def test_listing_an_accounts_contacts_pages_and_leaves_out_archived_ones(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    account = await new_account(http, settings)
    made = [(await add_contact(http, settings, account["id"])).json() for _ in range(3)]
    assert (await delete(http, settings, f"/v1/contacts/{made[1]['id']}")).status_code == 204
    path = f"/v1/accounts/{account['id']}/contacts"
    page = (await http.get(f"{path}?limit=1", headers=as_(settings, "rep-3"))).json()
    assert [c["id"] for c in page["items"]] == [made[0]["id"]] and page["next_cursor"]
    rest = (await http.get(f"{path}?limit=1&cursor={page['next_cursor']}", headers=as_(settings, "rep-3"))).json()
    assert [c["id"] for c in rest["items"]] == [made[2]["id"]]
    assert (await http.get(f"{path}?cursor={rest['next_cursor']}", headers=as_(settings, "rep-3"))).json() == {
        "items": [], "next_cursor": None}
    problem(await http.get("/v1/accounts/acc-missing/contacts", headers=as_(settings, "rep-1")), 404)


async def test_changing_a_contact_takes_its_version_and_a_new_primary_demotes_the_former(
    http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool
) -> None:
    account = await new_account(http, settings)
    primary = (await add_contact(http, settings, account["id"], is_primary=True, phone=mobile())).json()
    other = (await add_contact(http, settings, account["id"], title="工程师")).json()
    path = f"/v1/contacts/{other['id']}"
    changed = await patch(http, settings, path, {"title": "采购总监", "role": "influencer", "is_primary": True},
                          if_match='"1"', user="mgr-1")
    assert changed.status_code == 200, changed.text
    assert (changed.json()["title"], changed.json()["version"], changed.headers["etag"]) == ("采购总监", 2, '"2"')
    assert (changed.json()["updated_by"], changed.json()["is_primary"]) == ("mgr-1", True)
    demoted = (await http.get(f"/v1/contacts/{primary['id']}", headers=as_(settings, "rep-1"))).json()
    assert (demoted["is_primary"], demoted["version"]) == (False, 2)
    problem(await patch(http, settings, path, {"title": "经理"}, if_match='"1"'), 412, "version 2")
    problem(await patch(http, settings, path, {"title": "经理", "version": 1}), 412)
    problem(await patch(http, settings, path, {"name": None}), 422, "name")
    problem(await patch(http, settings, path, {"account_id": "acc-x"}), 422)
    unchanged = await patch(http, settings, path, {"title": "采购总监"}, if_match='"2"')
    assert unchanged.json()["version"] == 2  # nothing changed: no new version, no event
    cleared = await patch(http, settings, path, {"title": None, "role": None})
    assert (cleared.json()["title"], cleared.json()["role"], cleared.json()["version"]) == (None, None, 3)
    primaries = await tables.fetchval(
        "SELECT count(*) FROM contacts WHERE account_id = $1 AND is_primary", account["id"])
    assert primaries == 1

    records = await read_topic(settings, "sales.accounts", count=2, match=primary["id"].encode())
    events = [parse_and_validate(r.value) for r in records]  # every contact event against its schema
    assert [(e.type, e.sequence) for e in events] == [("sales.contact.created.v1", 1), ("sales.contact.updated.v1", 2)]
    assert (events[1].data["changed_fields"], events[1].data["updated_by"]) == (["is_primary"], "mgr-1")
    records = await read_topic(settings, "sales.accounts", count=3, match=other["id"].encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [(e.type, e.sequence) for e in events] == [
        ("sales.contact.created.v1", 1), ("sales.contact.updated.v1", 2), ("sales.contact.updated.v1", 3)]
    assert events[1].data["changed_fields"] == ["is_primary", "role", "title"]
    assert (events[1].data["title"], events[1].data["account_id"]) == ("采购总监", account["id"])
    assert events[2].data["changed_fields"] == ["role", "title"] and events[2].data["role"] is None


async def test_a_contact_an_open_deal_names_is_not_archived(http: httpx.AsyncClient, settings: Settings) -> None:
    account = await new_account(http, settings)
    contact = (await add_contact(http, settings, account["id"], role="decision_maker")).json()
    path = f"/v1/contacts/{contact['id']}"
    deals = [await open_opportunity(http, settings, account_id=account["id"], contact_id=contact["id"])
             for _ in range(2)]
    assert deals[0]["contact_id"] == contact["id"]
    problem(await delete(http, settings, path), 409, "named by 2 open or suspended opportunities",
            deals[0]["id"], deals[1]["id"])
    await post(http, settings, f"/v1/opportunities/{deals[0]['id']}/suspend", {"reason": "预算冻结"})
    problem(await delete(http, settings, path), 409, "named by 2")  # a suspended deal may be reactivated
    await post(http, settings, f"/v1/opportunities/{deals[0]['id']}/terminate", {"reason": "项目取消"})
    await post(http, settings, f"/v1/opportunities/{deals[1]['id']}/close",
               {"outcome": "lost", "reason": "价格", "competitor": "Rival"})
    problem(await delete(http, settings, path, if_match='"7"'), 412)
    assert (await delete(http, settings, path, if_match='"1"')).status_code == 204
    archived = (await http.get(path, headers=as_(settings, "rep-1"))).json()  # closed deals still name it
    assert (archived["archived_by"], archived["version"]) == ("rep-1", 2) and archived["archived_at"]
    assert (await delete(http, settings, path)).status_code == 204  # done already: no second event
    problem(await patch(http, settings, path, {"title": "x"}), 409, "archived")
    problem(await post(http, settings, "/v1/opportunities", {
        "name": "x", "account_id": account["id"], "contact_id": contact["id"]}), 422, "not a current contact")
    elsewhere = await new_account(http, settings)
    problem(await post(http, settings, "/v1/opportunities", {
        "name": "x", "account_id": elsewhere["id"], "contact_id": contact["id"]}), 422, "contact_id")

    records = await read_topic(settings, "sales.accounts", count=2, match=contact["id"].encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [(e.type, e.sequence) for e in events] == [("sales.contact.created.v1", 1), ("sales.contact.archived.v1", 2)]
    assert (events[1].data["archived_by"], events[1].data["account_id"]) == ("rep-1", account["id"])


async def test_concurrent_changes_of_one_account_s_contacts_are_decided_one_at_a_time(
    http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool
) -> None:
    account = await new_account(http, settings)
    phone = mobile()
    both = await asyncio.gather(*(add_contact(http, settings, account["id"], phone=phone) for _ in range(2)))
    assert sorted(r.status_code for r in both) == [201, 409]  # the account's lock: the second sees the first
    contact = next(r.json() for r in both if r.status_code == 201)
    path = f"/v1/contacts/{contact['id']}"
    edits = await asyncio.gather(patch(http, settings, path, {"title": "采购经理"}, if_match='"1"'),
                                 patch(http, settings, path, {"title": "财务总监"}, if_match='"1"', user="mgr-1"))
    assert sorted(r.status_code for r in edits) == [200, 412]
    winner = next(r.json() for r in edits if r.status_code == 200)
    stored = await tables.fetchrow("SELECT title, version FROM contacts WHERE id = $1", contact["id"])
    assert (stored["title"], stored["version"]) == (winner["title"], 2)
    primaries = await asyncio.gather(*(add_contact(http, settings, account["id"], is_primary=True) for _ in range(3)))
    assert [r.status_code for r in primaries] == [201] * 3
    assert await tables.fetchval("SELECT count(*) FROM contacts WHERE account_id = $1 AND is_primary",
                                 account["id"]) == 1


async def test_a_converted_lead_whose_person_the_account_knows_links_that_contact(
    http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    account = await new_account(http, settings)
    known = (await add_contact(http, settings, account["id"], phone="138 0000 0000")).json()
    lead, stranger = f"lead-{uuid.uuid4()}", f"lead-{uuid.uuid4()}"
    # converted() gives the person the phone "+86 138 0000 0000": the known contact's, spelled otherwise
    await send(producer, converted(lead, account["name"], account_id=account["id"]), lead)
    person = {"name": "赵敏", "company": account["name"], "phone": None, "email": f"{uuid.uuid4().hex[:8]}@x.cn"}
    await send(producer, converted(stranger, account["name"], account_id=account["id"], contact=person), stranger)

    async def opened() -> list[asyncpg.Record] | None:
        rows = await tables.fetch("SELECT lead_id, contact_id FROM opportunities WHERE lead_id = ANY($1::text[])",
                                  [lead, stranger])
        return rows if len(rows) == 2 else None

    deals = {r["lead_id"]: r["contact_id"] for r in await eventually(opened, timeout=30)}
    assert deals[lead] == known["id"]  # no second contact for the person the account knows
    added = await tables.fetchrow("SELECT * FROM contacts WHERE lead_id = $1", stranger)
    assert deals[stranger] == added["id"] and added["email"] == person["email"]
    assert await tables.fetchval("SELECT count(*) FROM contacts WHERE account_id = $1", account["id"]) == 2
