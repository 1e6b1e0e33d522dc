"""Quotes (报价) through the opportunities service's HTTP API, against the session's real Postgres and Tansu:
line items and totals, submission with automatic approval below the discount threshold, a manager's
approval or rejection past it, revision, versions (412), role scoping and the events with their schemas."""

import asyncio
from typing import Any

import httpx
import pytest

from services.opportunities.quotes.api import THRESHOLD_VARIABLE
from shared.events.envelope import parse_and_validate
from shared.settings import Settings
from tests.integration import test_opportunities_api
from tests.integration.test_opportunities_api import as_, open_opportunity, post, problem
from tests.support.topics import read_topic

http = test_opportunities_api.http  # the service app in-process, one for this module too

LINES = [
    {"product": "数据平台 license", "quantity": 10, "unit_price": "25000.00", "discount": "5"},
    {"product": "实施服务", "quantity": "2.5", "unit_price": "8000.00"},
]


async def new_quote(
    http: httpx.AsyncClient, settings: Settings, user: str = "rep-1", discount: str = "0", **opportunity: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    opp = await open_opportunity(http, settings, user=user, **opportunity)
    created = await post(http, settings, f"/v1/opportunities/{opp['id']}/quotes",
                         {"lines": LINES, "discount": discount}, user=user)
    assert created.status_code == 201, created.text
    return opp, dict(created.json())


async def test_a_quote_has_lines_and_decimal_totals(http: httpx.AsyncClient, settings: Settings) -> None:
    opp, quote = await new_quote(http, settings, discount="10", currency="USD")
    assert (quote["status"], quote["version"], quote["currency"]) == ("draft", 1, "USD")
    assert (quote["opportunity_id"], quote["account_id"], quote["owner_id"]) == (opp["id"], opp["account_id"], "rep-1")
    assert [line["net"] for line in quote["lines"]] == ["237500.00", "20000.00"]
    assert (quote["list_total"], quote["subtotal"], quote["total"]) == ("270000.00", "257500.00", "231750.00")
    assert (quote["discount"], quote["effective_discount"]) == ("10.00", "14.17")
    got = await http.get(f"/v1/quotes/{quote['id']}", headers=as_(settings, "rep-1"))
    assert got.status_code == 200 and got.headers["etag"] == '"1"' and got.json()["total"] == "231750.00"
    listed = await http.get(f"/v1/quotes?opportunity_id={opp['id']}", headers=as_(settings, "rep-1"))
    assert [q["id"] for q in listed.json()["items"]] == [quote["id"]]


async def test_bad_quotes_are_refused(http: httpx.AsyncClient, settings: Settings) -> None:
    opp = await open_opportunity(http, settings)
    path = f"/v1/opportunities/{opp['id']}/quotes"
    for body, words in [
        ({"lines": []}, ["at least one line"]),
        ({"lines": [{"product": "X", "quantity": 1, "unit_price": "1.001"}]}, ["two decimal places"]),
        ({"lines": [{"product": "X", "quantity": 0, "unit_price": "1.00"}]}, ["more than 0"]),
        ({"lines": LINES, "discount": "100"}, ["percentage"]),
        ({"lines": LINES, "currency": "yuan"}, ["ISO 4217"]),
    ]:
        problem(await post(http, settings, path, body), 422, *words)
    # floats are never amounts, quantities or percentages
    for line in ({"product": "X", "quantity": 1, "unit_price": 10.5}, {"product": "X", "quantity": 1.5,
                                                                       "unit_price": "1.00"}):
        assert (await post(http, settings, path, {"lines": [line]})).status_code == 422
    assert (await post(http, settings, path, {"lines": LINES, "discount": 5.5})).status_code == 422
    problem(await post(http, settings, "/v1/opportunities/opp-nobody/quotes", {"lines": LINES}), 404)
    await post(http, settings, f"/v1/opportunities/{opp['id']}/suspend", {"reason": "budget frozen"})
    problem(await post(http, settings, path, {"lines": LINES}), 409, "suspended")


async def test_within_the_threshold_a_submitted_quote_is_approved_at_once(
    http: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(THRESHOLD_VARIABLE, "15")
    _, quote = await new_quote(http, settings, discount="10")  # 14.17 % in all
    submitted = await post(http, settings, f"/v1/quotes/{quote['id']}/submit", {"version": 1})
    assert submitted.status_code == 200, submitted.text
    body = submitted.json()
    assert (body["status"], body["approval_required"], body["approver_id"]) == ("approved", False, None)
    assert (body["decided_by"], body["approval_threshold"], body["version"]) == ("system", "15.00", 3)
    assert submitted.headers["etag"] == '"3"'
    problem(await post(http, settings, f"/v1/quotes/{quote['id']}/approve", user="mgr-1"), 409, "approved")
    problem(await http.put(f"/v1/quotes/{quote['id']}", json={"lines": LINES}, headers=as_(settings, "rep-1")),
            409, "new quote")


async def test_past_the_threshold_the_owners_manager_approves(
    http: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(THRESHOLD_VARIABLE, "10")
    _, quote = await new_quote(http, settings, discount="10")
    path = f"/v1/quotes/{quote['id']}"
    submitted = (await post(http, settings, f"{path}/submit")).json()
    assert (submitted["status"], submitted["approval_required"], submitted["approver_id"]) == (
        "pending_approval", True, "mgr-1")
    queue = await http.get("/v1/quotes?status=pending_approval&approver_id=mgr-1", headers=as_(settings, "mgr-1"))
    assert quote["id"] in [q["id"] for q in queue.json()["items"]]
    problem(await post(http, settings, f"{path}/submit"), 409, "only a draft")
    problem(await post(http, settings, f"{path}/approve", user="rep-1"), 403, "manager")  # a rep never approves
    problem(await post(http, settings, f"{path}/approve", user="mgr-2"), 403, "outside")  # another team's manager
    problem(await post(http, settings, f"{path}/approve", {"version": 1}, user="mgr-1"), 412, "version 2")
    approved = await post(http, settings, f"{path}/approve", {"reason": "strategic account"}, user="mgr-1")
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["decided_by"], approved.json()["version"]) == (
        "approved", "mgr-1", 3)
    assert approved.json()["decision_reason"] == "strategic account"


async def test_a_rejected_quote_is_revised_and_resubmitted(
    http: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(THRESHOLD_VARIABLE, "10")
    _, quote = await new_quote(http, settings, discount="20")
    path = f"/v1/quotes/{quote['id']}"
    await post(http, settings, f"{path}/submit")
    problem(await post(http, settings, f"{path}/reject", user="mgr-1"), 422, "reason")
    rejected = await post(http, settings, f"{path}/reject", {"reason": "折扣过大"}, user="mgr-1")
    assert (rejected.json()["status"], rejected.json()["decision_reason"]) == ("rejected", "折扣过大")
    stale = await http.put(path, json={"lines": LINES, "version": 2}, headers=as_(settings, "rep-1"))
    problem(stale, 412, "version 3")
    revised = await http.put(path, json={"lines": LINES, "discount": "2"},
                             headers={**as_(settings, "rep-1"), "If-Match": '"3"'})
    assert revised.status_code == 200, revised.text
    body = revised.json()
    assert (body["status"], body["version"], body["decided_by"], body["approval_required"]) == ("draft", 4, None, None)
    assert (body["discount"], body["total"]) == ("2.00", "252350.00")
    resubmitted = (await post(http, settings, f"{path}/submit")).json()
    assert (resubmitted["status"], resubmitted["version"]) == ("approved", 6)


async def test_a_managers_own_quote_goes_to_their_director(
    http: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(THRESHOLD_VARIABLE, "10")
    _, quote = await new_quote(http, settings, user="mgr-1", discount="30")
    path = f"/v1/quotes/{quote['id']}"
    assert (await post(http, settings, f"{path}/submit", user="mgr-1")).json()["approver_id"] == "dir-1"
    problem(await post(http, settings, f"{path}/approve", user="mgr-1"), 409, "cannot also approve")
    assert (await post(http, settings, f"{path}/approve", user="dir-1")).json()["decided_by"] == "dir-1"
    # a manager submitting a rep's quote is not its approver either
    _, other = await new_quote(http, settings, user="rep-2", discount="30")
    asked = (await post(http, settings, f"/v1/quotes/{other['id']}/submit", user="mgr-1")).json()
    assert asked["approver_id"] == "dir-1"


async def test_quotes_are_scoped_like_their_opportunity(http: httpx.AsyncClient, settings: Settings) -> None:
    opp, quote = await new_quote(http, settings, user="rep-1")
    path = f"/v1/quotes/{quote['id']}"
    assert (await http.get(path, headers=as_(settings, "rep-2"))).status_code == 403
    assert (await http.get(path, headers=as_(settings, "mgr-2"))).status_code == 403
    assert (await http.get(path, headers=as_(settings, "mgr-1"))).status_code == 200
    assert (await http.get(path, headers=as_(settings, "dir-1"))).status_code == 200
    problem(await post(http, settings, f"/v1/opportunities/{opp['id']}/quotes", {"lines": LINES}, user="rep-3"), 403)
    problem(await post(http, settings, f"{path}/submit", user="rep-2"), 403)
    listed = await http.get(f"/v1/quotes?opportunity_id={opp['id']}", headers=as_(settings, "rep-3"))
    assert listed.json()["items"] == []


async def test_two_concurrent_submissions_one_wins(http: httpx.AsyncClient, settings: Settings) -> None:
    _, quote = await new_quote(http, settings)
    first, second = await asyncio.gather(
        post(http, settings, f"/v1/quotes/{quote['id']}/submit", {"version": 1}),
        post(http, settings, f"/v1/quotes/{quote['id']}/submit", {"version": 1}),
    )
    assert sorted([first.status_code, second.status_code]) == [200, 412]


async def test_every_quote_event_validates_with_a_per_quote_sequence(
    http: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(THRESHOLD_VARIABLE, "10")
    opp, quote = await new_quote(http, settings, discount="20")
    path = f"/v1/quotes/{quote['id']}"
    await post(http, settings, f"{path}/submit")
    await post(http, settings, f"{path}/reject", {"reason": "too low"}, user="mgr-1")
    await http.put(path, json={"lines": LINES, "discount": "1"}, headers=as_(settings, "rep-1"))
    await post(http, settings, f"{path}/submit")

    records = await read_topic(settings, "sales.opportunities", count=6, match=quote["id"].encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [e.type for e in events] == [
        "sales.quote.created.v1", "sales.quote.submitted.v1", "sales.quote.rejected.v1", "sales.quote.revised.v1",
        "sales.quote.submitted.v1", "sales.quote.approved.v1"]
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6]
    assert all(e.subject == quote["id"] and e.data["opportunity_id"] == opp["id"] for e in events)
    needs, rejected, auto_submitted, auto = events[1].data, events[2].data, events[4].data, events[5].data
    assert (needs["status"], needs["approval_required"], needs["approver_id"]) == ("pending_approval", True, "mgr-1")
    assert (needs["approval_threshold"], needs["effective_discount"], needs["total"]) == ("10.00", "23.70", "206000.00")
    assert (rejected["rejected_by"], rejected["reason"]) == ("mgr-1", "too low")
    assert (auto_submitted["status"], auto_submitted["approval_required"], auto_submitted["approver_id"]) == (
        "approved", False, None)
    assert (auto["approved_by"], auto["automatic"], auto["total"]) == ("system", True, "254925.00")
