"""Deals shared between owners through the opportunities service's HTTP API against the session's real
Postgres and Tansu: a rep holding a split of a deal (and that rep's manager) sees it, its quotes and its
contracts, a rep without one does not, and a co-owner reads but does not change them."""

from typing import Any

import asyncpg
import httpx

from shared.settings import Settings
from tests.integration import test_opportunities_api
from tests.integration.test_opportunities_api import as_, open_opportunity, post, problem

http = test_opportunities_api.http  # the service app in-process, one for this module too
tables = test_opportunities_api.tables


async def share(http: httpx.AsyncClient, settings: Settings, deal: dict[str, Any], *owners: tuple[str, int]
                ) -> dict[str, Any]:
    body = {"owners": [{"owner_id": o, "split": s} for o, s in owners]}
    shared = await http.put(f"/v1/opportunities/{deal['id']}/owners", json=body, headers=as_(settings, "admin-1"))
    assert shared.status_code == 200, shared.text
    return dict(shared.json())


async def page_ids(http: httpx.AsyncClient, settings: Settings, user: str, path: str) -> list[str]:
    response = await http.get(path, headers=as_(settings, user))
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def listed(http: httpx.AsyncClient, settings: Settings, user: str, account_id: str, query: str = "") -> list[str]:
    return await page_ids(http, settings, user, f"/v1/opportunities?account_id={account_id}{query}")


async def test_a_rep_holding_a_split_sees_the_deal_and_so_does_their_manager(
    http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool
) -> None:
    deal = await open_opportunity(http, settings, user="rep-1")
    account_id = deal["account_id"]
    alone = await open_opportunity(http, settings, user="rep-1", account_id=account_id)
    path = f"/v1/opportunities/{deal['id']}"
    for outsider in ("rep-3", "mgr-2"):  # before the split: rep-3's team sees nothing of rep-1's
        problem(await http.get(path, headers=as_(settings, outsider)), 403)
        assert await listed(http, settings, outsider, account_id) == []

    await share(http, settings, deal, ("rep-1", 60), ("rep-3", 40))
    for co_owner in ("rep-3", "mgr-2"):  # the rep holding the split, and the manager of that rep's team
        got = await http.get(path, headers=as_(settings, co_owner))
        assert got.status_code == 200 and got.json()["owner_id"] == "rep-1"
        assert await listed(http, settings, co_owner, account_id) == [deal["id"]]
        assert await listed(http, settings, co_owner, account_id, "&owner_id=rep-1") == [deal["id"]]
    problem(await http.get(path, headers=as_(settings, "rep-2")), 403)  # a rep without a split
    assert await listed(http, settings, "rep-2", account_id) == []
    assert await listed(http, settings, "rep-1", account_id) == [deal["id"], alone["id"]]

    # A co-owner reads the deal; its changes stay with the primary owner's scope.
    problem(await post(http, settings, f"{path}/stage", {"stage": "bidding"}, user="rep-3"), 403, "may read it")
    edit = await http.patch(path, json={"amount": "1.00"}, headers=as_(settings, "mgr-2"))
    problem(edit, 403, "primary owner")
    quote = {"lines": [{"product": "数据平台", "quantity": 1, "unit_price": "1000.00"}]}
    problem(await post(http, settings, f"{path}/quotes", quote, user="rep-3"), 403, "may read it")
    assert (await post(http, settings, f"{path}/stage", {"stage": "bidding"}, user="rep-1")).status_code == 200

    holders = await tables.fetch("SELECT owner_id, split FROM opportunity_owners WHERE opportunity_id = $1"
                                 " ORDER BY owner_id", deal["id"])
    assert [(h["owner_id"], h["split"]) for h in holders] == [("rep-1", 60), ("rep-3", 40)]
    await share(http, settings, deal, ("rep-1", 100))  # no longer shared: rep-3's split is gone, and the view
    problem(await http.get(path, headers=as_(settings, "rep-3")), 403)
    assert await listed(http, settings, "rep-3", account_id) == []
    assert await tables.fetchval("SELECT count(*) FROM opportunity_owners WHERE opportunity_id = $1", deal["id"]) == 0


async def readable(http: httpx.AsyncClient, settings: Settings, user: str, *paths: str) -> list[int]:
    return [(await http.get(path, headers=as_(settings, user))).status_code for path in paths]


async def quotes_of(http: httpx.AsyncClient, settings: Settings, user: str, deal: dict[str, Any]) -> list[str]:
    return await page_ids(http, settings, user, f"/v1/quotes?opportunity_id={deal['id']}")


async def test_co_owners_read_the_deals_quotes_and_contracts_but_do_not_change_them(
    http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool
) -> None:
    deal = await open_opportunity(http, settings, user="rep-1")
    path = f"/v1/opportunities/{deal['id']}"
    lines = [{"product": "数据平台", "quantity": 1, "unit_price": "1000.00"}]
    draft = (await post(http, settings, f"{path}/quotes", {"lines": lines})).json()
    pending = (await post(http, settings, f"{path}/quotes", {"lines": lines, "discount": "20"})).json()
    submitted = await post(http, settings, f"/v1/quotes/{pending['id']}/submit", {})
    assert submitted.json()["status"] == "pending_approval", submitted.text
    assert (await post(http, settings, f"{path}/stage", {"stage": "contract"})).status_code == 200
    contract = (await post(http, settings, "/v1/contracts", {"opportunity_id": deal["id"]})).json()
    parts = (f"/v1/quotes/{draft['id']}", f"/v1/quotes/{pending['id']}", f"/v1/contracts/{contract['id']}")
    for outsider in ("rep-3", "mgr-2"):  # before the split: rep-3's team sees nothing of rep-1's
        assert await readable(http, settings, outsider, *parts) == [403, 403, 403]
        assert await quotes_of(http, settings, outsider, deal) == []

    await share(http, settings, deal, ("rep-1", 60), ("rep-3", 40))
    for co_owner in ("rep-3", "mgr-2"):  # the rep holding the split, and the manager of that rep's team
        assert await readable(http, settings, co_owner, *parts) == [200, 200, 200]
        assert await quotes_of(http, settings, co_owner, deal) == [draft["id"], pending["id"]]
    assert await readable(http, settings, "rep-2", *parts) == [403, 403, 403]  # rep-1's teammate, no split
    assert await quotes_of(http, settings, "rep-2", deal) == []

    # Their changes stay with the primary owner's scope: a co-owner is told they may read them.
    for user, method, part, body in [
        ("rep-3", "PUT", f"/v1/quotes/{draft['id']}", {"lines": lines, "note": "co-owner's"}),
        ("rep-3", "POST", f"/v1/quotes/{draft['id']}/submit", {}),
        ("mgr-2", "POST", f"/v1/quotes/{pending['id']}/approve", {}),
        ("mgr-2", "POST", f"/v1/quotes/{pending['id']}/reject", {"reason": "too deep"}),
        ("rep-3", "POST", f"/v1/contracts/{contract['id']}/sign", None),
        ("mgr-2", "POST", f"/v1/contracts/{contract['id']}/terminate", {"reason": "co-owner's"}),
    ]:
        co_owners = await http.request(method, part, json=body, headers=as_(settings, user))
        problem(co_owners, 403, "may read it", "primary owner")
        others = await http.request(method, part, json=body, headers=as_(settings, "rep-2"))  # no split
        problem(others, 403)
        assert "may read it" not in others.json()["detail"]
    assert await tables.fetchval("SELECT status FROM contracts WHERE id = $1", contract["id"]) == "draft"
    assert await tables.fetch("SELECT status, version FROM quotes WHERE id = ANY($1::text[]) ORDER BY created_at",
                              [draft["id"], pending["id"]]) == [("draft", 1), ("pending_approval", 2)]
    assert (await post(http, settings, f"/v1/contracts/{contract['id']}/sign")).status_code == 200  # rep-1 signs

    await share(http, settings, deal, ("rep-1", 100))  # no longer shared: rep-3's team no longer reads them
    assert await readable(http, settings, "rep-3", *parts) == [403, 403, 403]
    assert await quotes_of(http, settings, "rep-3", deal) == []
