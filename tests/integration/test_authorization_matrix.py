"""The authorisation matrix: every route of every running service x every kind of caller -> the exact
status of docs/authorization.md.

Every service runs as its own process (as `funnelcast up` runs it). The test reads each service's
/openapi.json: an operation missing from the table, or a table row no service serves any more, fails
it. For each cell it creates the records the call needs (owned by rep-1, rep-2 or rep-3 of the sample
organisation; a fresh record whenever the call changes state), sends a valid request for the route as
that caller and compares the status with the table's. The cells the table says are refused share one
record per route and owner: a refusal changes nothing, and a cell wrongly allowed fails all the same.

The module runs on a Postgres and a broker of its own: the cells' answers must not depend on what
earlier modules left behind (a scoring model trains only with 40 outcomes, a new consumer group would
read every earlier module's events first).
"""

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from shared.auth import ISSUER, Principal, issue_token, visible_owners
from shared.org import cached_organisation
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.runtime.supervisor import ServiceInstance, Stack
from shared.settings import Settings
from shared.topology import SERVICES
from shared.web import PROBLEM_JSON
from tests.conftest import settings_for
from tests.support.waiting import eventually, free_port

# 1,100 cells and the records they need took 1.5 to 3.5 minutes (stack start included) on a 2-core
# machine shared with other test runs (load average 15 to 28): close to the suite's 300 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TABLE = Path(__file__).resolve().parents[2] / "docs" / "authorization.md"

# The columns of the table, in order: who calls, and whose record they call about.
CALLERS = (
    "no token",
    "malformed token",
    "wrong signature",
    "expired token",
    "rep own",
    "rep other rep's",
    "manager own team",
    "manager other team",
    "director",
    "admin",
    "integration",
)


@dataclass(frozen=True)
class Caller:
    user: str | None  # whose token (None: no Authorization header)
    target: str  # the owner of the record the call is about
    token_kind: str = "valid"  # valid | malformed | wrong-secret | expired


CALLER_OF = {
    "no token": Caller(None, "rep-1"),
    "malformed token": Caller("rep-1", "rep-1", "malformed"),
    "wrong signature": Caller("rep-1", "rep-1", "wrong-secret"),
    "expired token": Caller("rep-1", "rep-1", "expired"),
    "rep own": Caller("rep-1", "rep-1"),
    "rep other rep's": Caller("rep-1", "rep-2"),
    "manager own team": Caller("mgr-1", "rep-1"),
    "manager other team": Caller("mgr-1", "rep-3"),
    "director": Caller("dir-1", "rep-3"),
    "admin": Caller("admin-1", "rep-3"),
    "integration": Caller("svc-erp", "rep-3"),
}
ROLES = {"rep-1": "rep", "rep-2": "rep", "rep-3": "rep", "mgr-1": "manager", "dir-1": "director",
         "admin-1": "admin", "svc-erp": "integration"}

# Dates follow the clock: deals close next month, the forecast periods are this quarter and next month.
_TODAY = datetime.now(UTC).date()
_NEXT_MONTH = (_TODAY.replace(day=1) + timedelta(days=32)).replace(day=1)
PERIOD = f"{_TODAY.year}-Q{(_TODAY.month - 1) // 3 + 1}"
CLOSE_DATE = _NEXT_MONTH.replace(day=15).isoformat()
# What the test's webhook subscriptions listen to: an event few cells cause, so that few deliveries
# (to closed loopback ports, retried) load the notifications service.
RARE_EVENT = "sales.quote.rejected.v1"
BOOKINGS_MONTH = f"{_NEXT_MONTH:%Y-%m}"
SINCE = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
CONCURRENCY = 12
# Generous: on a machine shared with other test runs one answer has taken 30 s. A hung route still fails.
HTTP_TIMEOUT_S = 120


# --- the table ---------------------------------------------------------------------------------


def read_table(path: Path = TABLE) -> dict[tuple[str, str], dict[str, int]]:
    """(service, 'METHOD /path') -> caller -> expected status, from the markdown table."""
    expected: dict[tuple[str, str], dict[str, int]] = {}
    header: list[str] | None = None  # of the table being read; other tables of the page are skipped
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            if header[:2] == ["service", "route"]:
                assert tuple(header[2:]) == CALLERS, (
                    f"{path.name}: the matrix's columns must be service, route, {', '.join(CALLERS)}; got {header}"
                )
            continue
        if header[:2] != ["service", "route"] or set("".join(cells)) <= set("-: "):
            continue  # the separator row
        service, route, *statuses = cells
        assert len(statuses) == len(CALLERS), f"{path.name}: row {route} has {len(statuses)} statuses"
        assert (service, route) not in expected, f"{path.name}: {service} {route} is listed twice"
        expected[(service, route)] = {c: int(s) for c, s in zip(CALLERS, statuses, strict=True)}
    assert expected, f"{path.name} holds no table"
    return expected


def markdown_row(service: str, route: str, statuses: dict[str, int]) -> str:
    return f"| {service} | `{route}` | " + " | ".join(str(statuses[c]) for c in CALLERS) + " |"


# --- the running services and the records the cells need --------------------------------------


@dataclass
class Call:
    method: str
    path: str
    json: Any = None
    params: dict[str, str] | None = None
    content: bytes | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # A call that must not overlap others of its kind: sent holding World.exclusive(name), after `ready`.
    exclusive: str | None = None
    ready: Callable[[], Awaitable[None]] | None = None


class World:
    """HTTP clients for every service, tokens for every caller, and record factories (acting as admin,
    who sees everything)."""

    def __init__(self, clients: dict[str, httpx.AsyncClient], secret: str) -> None:
        self.clients = clients
        self.secret = secret
        self._shared: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def token(self, caller: Caller) -> str | None:
        if caller.user is None:
            return None
        role = ROLES[caller.user]
        if caller.token_kind == "malformed":
            return "not-a-jwt"
        if caller.token_kind == "wrong-secret":
            return issue_token(caller.user, role, "not-" + self.secret, ttl_s=3600)
        if caller.token_kind == "expired":
            now = int(time.time())
            claims = {"sub": caller.user, "role": role, "iss": ISSUER, "iat": now - 7200, "exp": now - 3600}
            return jwt.encode(claims, self.secret, algorithm="HS256")
        return issue_token(caller.user, role, self.secret, ttl_s=3600)

    async def send(self, service: str, call: Call, token: str | None) -> httpx.Response:
        """Send `call` with `token` as its bearer token (None: no Authorization header)."""
        headers = dict(call.headers)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.clients[service].request(
            call.method, call.path, json=call.json, params=call.params, content=call.content, data=call.data,
            headers=headers,
        )

    async def admin(self, service: str, method: str, path: str, json: Any = None, ok: int = 200,
                    user: str = "admin-1", **kwargs: Any) -> Any:
        response = await self.send(service, Call(method, path, json=json, **kwargs), self.token(Caller(user, user)))
        assert response.status_code == ok, f"setting up: {method} {path} -> {response.status_code} {response.text}"
        return response.json() if response.content else None

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str | None) -> AsyncIterator[None]:
        if name is None:
            yield
            return
        async with self._locks.setdefault(("exclusive", name), asyncio.Lock()):
            yield

    async def no_replay_running(self, service: str) -> None:
        """A service runs one replay at a time (409 meanwhile): wait until the last one has finished."""
        async def idle() -> bool:
            replays = await self.admin(service, "GET", "/v1/replays")
            return all(r["status"] != "running" for r in replays)

        await eventually(idle, timeout=60, interval=0.1)

    def factory(self, kind: str) -> Callable[..., Awaitable[Any]]:
        """The method that makes a record of `kind` for an owner."""
        makers: dict[str, Callable[..., Awaitable[Any]]] = {
            "lead": self.lead, "campaign": self.campaign, "opportunity": self.opportunity, "account": self.account,
            "contract": self.contract, "quote": self.quote, "lead-score": self.lead_score,
            "opp-score": self.opportunity_score, "account-tier": self.account_tier,
            "notification": self.notification, "rule": self.rule, "subscription": self.subscription,
            "pipeline": self.pipeline, "contact": self.contact,
        }
        return makers[kind]

    async def shared(self, kind: str, owner: str, make: Callable[[str], Awaitable[Any]]) -> Any:
        """One record per kind and owner for the calls that only read it."""
        key = (kind, owner)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._shared:
                self._shared[key] = await make(owner)
        return self._shared[key]

    # leads

    async def lead(self, owner: str, status: str = "new") -> str:
        unique = uuid.uuid4().hex[:12]
        body = {"contact": {"name": f"Authz {unique}", "email": f"authz-{unique}@example.test"}, "grade": "A",
                "owner_id": owner, "attributes": {"utm_source": "authz"}}
        lead_id: str = (await self.admin("leads", "POST", "/v1/leads", body, ok=201))["id"]
        if status in ("contacted", "qualified"):
            await self.admin("leads", "POST", f"/v1/leads/{lead_id}/touches", {"channel": "phone"}, ok=201)
        if status == "qualified":
            await self.admin("leads", "POST", f"/v1/leads/{lead_id}/qualify", {})
        return lead_id

    async def campaign(self, owner: str) -> str:
        body = {"name": f"Authz {uuid.uuid4().hex[:8]}", "channel": "event", "budget": "1000", "owner_id": owner}
        campaign_id: str = (await self.admin("leads", "POST", "/v1/campaigns", body, ok=201))["id"]
        return campaign_id

    # opportunities

    async def opportunity(self, owner: str, status: str = "open") -> str:
        body = {"name": f"Authz deal {uuid.uuid4().hex[:8]}", "account_name": f"Authz Co {uuid.uuid4().hex[:12]}",
                "amount": "10000.00", "currency": "CNY", "owner_id": owner, "expected_close_date": CLOSE_DATE}
        opportunity_id: str = (await self.admin("opportunities", "POST", "/v1/opportunities", body, ok=201))["id"]
        path = f"/v1/opportunities/{opportunity_id}"
        if status == "suspended":
            await self.admin("opportunities", "POST", f"{path}/suspend", {"reason": "budget frozen"})
        elif status in ("won", "lost"):
            closing = {"outcome": status, "reason": "authz", "competitor": "none"}
            await self.admin("opportunities", "POST", f"{path}/close", closing)
        return opportunity_id

    async def pipeline(self, _owner: str) -> str:
        """A pipeline of the test's own: the default one stays as every other cell expects it."""
        pipeline_id = f"authz-{uuid.uuid4().hex[:10]}"
        await self.admin("opportunities", "POST", "/v1/pipelines", {"id": pipeline_id, **pipeline_body()}, ok=201)
        return pipeline_id

    async def account(self, owner: str) -> str:
        body = {"name": f"Authz Account {uuid.uuid4().hex[:12]}", "owner_id": owner}
        account_id: str = (await self.admin("opportunities", "POST", "/v1/accounts", body, ok=201))["id"]
        return account_id

    async def contact(self, owner: str) -> str:
        """A contact of an account of the owner's."""
        account_id = await self.account(owner)
        body = {"name": unique("Authz contact"), "phone": _phone()}
        contact_id: str = (await self.admin("opportunities", "POST", f"/v1/accounts/{account_id}/contacts", body,
                                            ok=201))["id"]
        return contact_id

    async def contract(self, owner: str, status: str = "draft") -> str:
        opportunity_id = await self.opportunity(owner, "won")
        body = {"opportunity_id": opportunity_id}
        contract_id: str = (await self.admin("opportunities", "POST", "/v1/contracts", body, ok=201))["id"]
        if status == "signed":
            await self.admin("opportunities", "POST", f"/v1/contracts/{contract_id}/sign")
        return contract_id

    async def quote(self, owner: str, status: str = "draft") -> str:
        opportunity_id = await self.opportunity(owner)
        body = quote_body()
        if status == "pending_approval":
            body["discount"] = "40"  # past any approval threshold: a manager decides
        created = await self.admin("opportunities", "POST", f"/v1/opportunities/{opportunity_id}/quotes", body, ok=201)
        quote_id: str = created["id"]
        if status == "pending_approval":
            # the owner submits: whoever submits a quote may not also approve or reject it
            submitted = await self.admin("opportunities", "POST", f"/v1/quotes/{quote_id}/submit", {}, user=owner)
            assert submitted["status"] == "pending_approval", submitted
        return quote_id

    # scoring: scores follow the owners' leads and opportunities through the broker

    async def lead_score(self, owner: str) -> str:
        lead_id: str = await self.shared("lead", owner, self.lead)
        await self.wait_ok("scoring", f"/v1/leads/{lead_id}/score")
        return lead_id

    async def opportunity_score(self, owner: str) -> str:
        opportunity_id: str = await self.shared("opportunity", owner, self.opportunity)
        await self.wait_ok("scoring", f"/v1/opportunities/{opportunity_id}/score")
        return opportunity_id

    async def account_tier(self, owner: str) -> str:
        """An account of the owner's with a signed contract: the scoring service tiers it."""
        contract_id = await self.contract(owner, "signed")
        account_id: str = (await self.admin("opportunities", "GET", f"/v1/contracts/{contract_id}"))["account_id"]
        await self.wait_ok("scoring", f"/v1/accounts/{account_id}/tier")
        return account_id

    async def wait_ok(self, service: str, path: str, user: str = "admin-1") -> Any:
        async def answered() -> Any:
            response = await self.send(service, Call("GET", path), self.token(Caller(user, user)))
            return response.json() if response.status_code == 200 else None

        return await eventually(answered, timeout=60, interval=0.2)

    # notifications: an owner's notification follows the assignment of a lead to them

    async def notification(self, owner: str) -> str:
        lead_id = await self.shared("lead", owner, self.lead)

        async def arrived() -> str | None:
            call = Call("GET", "/v1/notifications", params={"limit": "500"})
            inbox = await self.send("notifications", call, self.token(Caller(owner, owner)))
            assert inbox.status_code == 200, inbox.text
            return next((n["id"] for n in inbox.json()["items"] if n["subject"] == lead_id), None)

        found = await eventually(arrived, timeout=60, interval=0.2)
        assert found is not None  # eventually returns a truthy value
        return found

    async def rule(self, _owner: str) -> str:
        rule_id = f"authz-{uuid.uuid4().hex[:10]}"
        await self.admin("notifications", "POST", "/v1/rules", {**rule_body(), "id": rule_id}, ok=201)
        return rule_id

    async def subscription(self, _owner: str, event_type: str = RARE_EVENT) -> str:
        """A webhook subscription of the integration (svc-erp): the subscriber owns it."""
        body = {"url": f"http://127.0.0.1:{free_port()}/hook", "event_types": [event_type]}
        created = await self.admin("notifications", "POST", "/v1/webhooks", body, ok=201, user="svc-erp")
        subscription_id: str = created["id"]
        return subscription_id

    async def delivery(self, owner: str) -> tuple[str, str]:
        """A subscription of svc-erp with one delivery (to a closed loopback port: it fails and is retried)."""
        subscription_id = await self.subscription(owner, "sales.opportunity.assessed.v1")
        opportunity_id = await self.opportunity(owner)
        await self.admin("opportunities", "PUT", f"/v1/opportunities/{opportunity_id}/assessment", ASSESSMENT)

        async def delivered() -> str | None:
            log = await self.send("notifications", Call("GET", f"/v1/webhooks/{subscription_id}/deliveries"),
                                  self.token(Caller("svc-erp", "svc-erp")))
            assert log.status_code == 200, log.text
            items = log.json()["items"]
            return str(items[0]["id"]) if items else None

        delivery_id = await eventually(delivered, timeout=60, interval=0.2)
        assert delivery_id is not None  # eventually returns a truthy value
        return subscription_id, delivery_id

    async def prepare(self) -> None:
        """The records that arrive through the broker (scores, notifications, webhook deliveries), made
        before the cells run: waiting for them inside a cell would hold the others up."""
        owners = sorted({c.target for c in CALLER_OF.values()})
        await asyncio.gather(
            *(self.shared(kind, owner, make) for owner in owners for kind, make in (
                ("notification", self.notification), ("lead-score", self.lead_score),
                ("opp-score", self.opportunity_score), ("delivery", self.delivery),
                ("account-tier", self.account_tier),
            )),
            *(self.replay(service) for service in self.clients),
            self.shared("bookings", "rep-1", self.bookings),
        )

    async def bookings(self, owner: str) -> None:
        """A won deal in the forecasting service's history: a bookings forecast has something to go on."""
        await self.opportunity(owner, "won")
        await self.wait_ok("forecasting", f"/v1/forecast/bookings?period={BOOKINGS_MONTH}")

    async def replay(self, service: str) -> str:
        async def start(_: str) -> str:
            async with self.exclusive(f"replays {service}"):
                await self.no_replay_running(service)
                replay_id: str = (await self.admin(service, "POST", "/v1/replays", {"since": SINCE}, ok=202))["id"]
            return replay_id

        replay_id: str = await self.shared(f"replay:{service}", "admin-1", start)
        return replay_id


def quote_body() -> dict[str, Any]:
    return {"lines": [{"product": "Authz licence", "quantity": 2, "unit_price": "1200.00"}], "note": "authz"}


def pipeline_body() -> dict[str, Any]:
    return {"name": {"zh-CN": "渠道销售", "en": "Channel sales"}, "allow_skipping": False,
            "stages": [{"key": "lead_in", "label": {"zh-CN": "线索", "en": "Lead in"}, "probability": 5},
                       {"key": "demo", "label": {"zh-CN": "演示", "en": "Demo"}, "probability": 25}]}


def rule_body() -> dict[str, Any]:
    return {
        "event_type": "sales.lead.disqualified.v1",
        "description": "authorisation matrix rule",
        "recipients": [{"kind": "owner"}],
        "channels": ["inbox"],
        "templates": {"zh-CN": {"title": "线索失效：{lead_id}", "body": "{lead_id}"}},
    }


def other_rep(owner: str) -> str:
    """A rep to hand an owner's record to: the team-mate in east, rep-1 otherwise."""
    return {"rep-1": "rep-2", "rep-2": "rep-1"}.get(owner, "rep-1")


# --- recipes: a valid request for each route, about a record of `owner` ---------------------------

Recipe = Callable[[World, str], Awaitable[Call]]


def fixed(method: str, path: str, **kwargs: Any) -> Recipe:
    """The same request whoever the record's owner is (the route names no record)."""
    async def make(_w: World, _owner: str) -> Call:
        return Call(method, path, **kwargs)

    return make


def naming(method: str, path: str, **parts: Callable[[str], Any]) -> Recipe:
    """A request naming the owner: `json` / `params` built from it, `{owner}` in the path."""
    async def make(_w: World, owner: str) -> Call:
        built = {name: part(owner) for name, part in parts.items()}
        return Call(method, path.format(owner=owner), **built)

    return make


# A body: as it is, or made from the record's id and its owner.
Body = Any | Callable[[str, str], Any]


def _body(body: Body, record: str, owner: str) -> Any:
    return body(record, owner) if callable(body) else body


def reading(kind: str, method: str, path: str, json: Body = None) -> Recipe:
    """A call about the owner's record of `kind` (its id fills `{}` in the path), one record per owner and
    kind: the call does not change it."""
    async def make(w: World, owner: str) -> Call:
        record = await w.shared(kind, owner, w.factory(kind))
        return Call(method, path.format(record), json=_body(json, record, owner))

    return make


def changing(kind: str, method: str, path: str, json: Body = None, state: str | None = None) -> Recipe:
    """A call about a fresh record of `kind` (in `state`) made for this cell: the call changes it."""
    async def make(w: World, owner: str) -> Call:
        factory = w.factory(kind)
        record = await (factory(owner, state) if state else factory(owner))
        return Call(method, path.format(record), json=_body(json, record, owner))

    return make


def unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:12]}"


def start_replay(service: str) -> Recipe:
    async def make(w: World, _owner: str) -> Call:
        return Call("POST", "/v1/replays", json={"since": SINCE}, exclusive=f"replays {service}",
                    ready=lambda: w.no_replay_running(service))

    return make


def replay_progress(service: str) -> Recipe:
    async def make(w: World, _owner: str) -> Call:
        return Call("GET", f"/v1/replays/{await w.replay(service)}")

    return make


async def _list_quotes(w: World, owner: str) -> Call:
    quote = await w.admin("opportunities", "GET", f"/v1/quotes/{await w.shared('quote', owner, w.quote)}")
    return Call("GET", "/v1/quotes", params={"opportunity_id": quote["opportunity_id"]})


async def _list_contracts(w: World, owner: str) -> Call:
    contract = await w.admin("opportunities", "GET", f"/v1/contracts/{await w.shared('contract', owner, w.contract)}")
    return Call("GET", "/v1/contracts", params={"opportunity_id": contract["opportunity_id"]})


async def _merge(w: World, owner: str) -> Call:
    keep, duplicate = await asyncio.gather(w.lead(owner), w.lead(owner))
    return Call("POST", f"/v1/leads/{keep}/merge", json={"duplicate_id": duplicate})


async def _move_to_pipeline(w: World, owner: str) -> Call:
    deal, pipeline = await asyncio.gather(w.opportunity(owner), w.shared("pipeline", owner, w.pipeline))
    return Call("POST", f"/v1/opportunities/{deal}/pipeline", json={"pipeline_id": pipeline})


async def _replay_delivery(w: World, owner: str) -> Call:
    subscription_id, delivery_id = await w.shared("delivery", owner, w.delivery)
    return Call("POST", f"/v1/webhooks/{subscription_id}/deliveries/{delivery_id}/replay")


def _import_csv(owner: str) -> bytes:
    name = unique("Authz")
    return f"name,email,owner_id\n{name},{name.split()[1]}@import.example.test,{owner}\n".encode()


def _phone() -> str:
    return f"138{uuid.uuid4().int % 10**8:08d}"


ASSESSMENT = {"need": "decided", "budget": "in_place", "urgency": "driving", "timing": "fixed",
              "decision_maker_trust": "high", "decision_process_knowledge": "medium", "leverage": "high"}
OPPORTUNITY = "/v1/opportunities/{}"

RECIPES: dict[tuple[str, str], Recipe] = {
    **{(service, "GET /v1/me"): fixed("GET", "/v1/me") for service in SERVICES},
    **{(service, "GET /v1/replays"): fixed("GET", "/v1/replays") for service in SERVICES},
    **{(service, "POST /v1/replays"): start_replay(service) for service in SERVICES},
    **{(service, "GET /v1/replays/{replay_id}"): replay_progress(service) for service in SERVICES},
    # leads
    ("leads", "POST /v1/leads"): naming("POST", "/v1/leads", json=lambda owner: {
        "contact": {"name": unique("Authz"), "phone": _phone()}, "grade": "B", "owner_id": owner}),
    ("leads", "GET /v1/leads"): naming("GET", "/v1/leads", params=lambda owner: {"owner_id": owner}),
    ("leads", "GET /v1/leads/{lead_id}"): reading("lead", "GET", "/v1/leads/{}"),
    ("leads", "GET /v1/leads/{lead_id}/history"): reading("lead", "GET", "/v1/leads/{}/history"),
    ("leads", "POST /v1/leads/{lead_id}/touches"): changing(
        "lead", "POST", "/v1/leads/{}/touches", {"channel": "phone", "note": "called"}),
    ("leads", "POST /v1/leads/{lead_id}/qualify"): changing(
        "lead", "POST", "/v1/leads/{}/qualify", {"note": "budget confirmed"}, state="contacted"),
    ("leads", "POST /v1/leads/{lead_id}/disqualify"): changing(
        "lead", "POST", "/v1/leads/{}/disqualify", {"reason": "no budget"}),
    ("leads", "POST /v1/leads/{lead_id}/convert"): changing(
        "lead", "POST", "/v1/leads/{}/convert", lambda _lead, _owner: {"account_name": unique("Authz Convert")},
        state="qualified"),
    ("leads", "POST /v1/leads/{lead_id}/engagement"): changing("lead", "POST", "/v1/leads/{}/engagement", {
        "visits": 3, "time_on_site_s": 240.0, "page_views": 9, "activity": "pricing page"}),
    ("leads", "POST /v1/leads/{lead_id}/grade"): changing("lead", "POST", "/v1/leads/{}/grade", {"grade": "H"}),
    ("leads", "POST /v1/leads/{lead_id}/assign"): changing(
        "lead", "POST", "/v1/leads/{}/assign", lambda _lead, owner: {"owner_id": other_rep(owner)}),
    ("leads", "POST /v1/leads/{lead_id}/merge"): _merge,
    ("leads", "POST /v1/leads/import"): naming(
        "POST", "/v1/leads/import", content=_import_csv, headers=lambda _owner: {"Content-Type": "text/csv"}),
    ("leads", "POST /v1/web-to-lead"): naming("POST", "/v1/web-to-lead", data=lambda _owner: {
        "name": unique("Authz"), "email": f"web-{uuid.uuid4().hex[:12]}@example.test"}),
    ("leads", "POST /v1/campaigns"): naming("POST", "/v1/campaigns", json=lambda owner: {
        "name": "Authz expo", "channel": "event", "budget": "5000", "owner_id": owner}),
    ("leads", "GET /v1/campaigns"): fixed("GET", "/v1/campaigns"),
    ("leads", "GET /v1/campaigns/{campaign_id}"): reading("campaign", "GET", "/v1/campaigns/{}"),
    ("leads", "PATCH /v1/campaigns/{campaign_id}"): changing(
        "campaign", "PATCH", "/v1/campaigns/{}", {"actual_cost": "120.50"}),
    # opportunities
    ("opportunities", "POST /v1/opportunities"): naming("POST", "/v1/opportunities", json=lambda owner: {
        "name": "Authz deal", "account_name": unique("Authz Co"), "amount": "20000.00", "currency": "CNY",
        "owner_id": owner, "expected_close_date": CLOSE_DATE}),
    ("opportunities", "GET /v1/opportunities"): naming(
        "GET", "/v1/opportunities", params=lambda owner: {"owner_id": owner}),
    ("opportunities", "GET /v1/opportunities/{opportunity_id}"): reading("opportunity", "GET", OPPORTUNITY),
    ("opportunities", "PATCH /v1/opportunities/{opportunity_id}"): changing(
        "opportunity", "PATCH", OPPORTUNITY, {"amount": "25000.00", "expected_close_date": "2027-03-31"}),
    ("opportunities", "POST /v1/opportunities/{opportunity_id}/stage"): changing(
        "opportunity", "POST", OPPORTUNITY + "/stage", {"stage": "bidding"}),
    ("opportunities", "POST /v1/opportunities/{opportunity_id}/pipeline"): _move_to_pipeline,
    ("opportunities", "POST /v1/opportunities/{opportunity_id}/close"): changing(
        "opportunity", "POST", OPPORTUNITY + "/close", {"outcome": "lost", "reason": "price", "competitor": "Rival"}),
    ("opportunities", "PUT /v1/opportunities/{opportunity_id}/assessment"): changing(
        "opportunity", "PUT", OPPORTUNITY + "/assessment", ASSESSMENT),
    ("opportunities", "POST /v1/opportunities/{opportunity_id}/suspend"): changing(
        "opportunity", "POST", OPPORTUNITY + "/suspend", {"reason": "budget frozen"}),
    ("opportunities", "POST /v1/opportunities/{opportunity_id}/reactivate"): changing(
        "opportunity", "POST", OPPORTUNITY + "/reactivate", {}, state="suspended"),
    ("opportunities", "POST /v1/opportunities/{opportunity_id}/terminate"): changing(
        "opportunity", "POST", OPPORTUNITY + "/terminate", {"reason": "project cancelled"}),
    ("opportunities", "POST /v1/opportunities/{opportunity_id}/archive"): changing(
        "opportunity", "POST", OPPORTUNITY + "/archive", {}, state="lost"),
    ("opportunities", "PUT /v1/opportunities/{opportunity_id}/owners"): changing(
        "opportunity", "PUT", OPPORTUNITY + "/owners",
        lambda _deal, owner: {"owners": [{"owner_id": owner, "split": 100}]}),
    ("opportunities", "GET /v1/pipelines"): fixed("GET", "/v1/pipelines"),
    ("opportunities", "GET /v1/pipelines/{pipeline_id}"): fixed("GET", "/v1/pipelines/project_sales"),
    ("opportunities", "POST /v1/pipelines"): naming("POST", "/v1/pipelines", json=lambda _owner: {
        "id": f"authz-{uuid.uuid4().hex[:10]}", **pipeline_body()}),
    ("opportunities", "PUT /v1/pipelines/{pipeline_id}"): changing(
        "pipeline", "PUT", "/v1/pipelines/{}", {**pipeline_body(), "allow_skipping": True}),
    ("opportunities", "POST /v1/accounts"): naming(
        "POST", "/v1/accounts", json=lambda owner: {"name": unique("Authz Account"), "owner_id": owner}),
    ("opportunities", "GET /v1/accounts"): fixed("GET", "/v1/accounts"),
    ("opportunities", "GET /v1/accounts/{account_id}"): reading("account", "GET", "/v1/accounts/{}"),
    ("opportunities", "PATCH /v1/accounts/{account_id}"): changing(
        "account", "PATCH", "/v1/accounts/{}", {"region": "华东"}),
    ("opportunities", "POST /v1/accounts/{account_id}/contacts"): changing(
        "account", "POST", "/v1/accounts/{}/contacts", lambda _account, _owner: {
            "name": unique("Authz contact"), "role": "decision_maker", "email": f"{uuid.uuid4().hex[:12]}@authz.test"}),
    ("opportunities", "GET /v1/accounts/{account_id}/contacts"): reading("account", "GET", "/v1/accounts/{}/contacts"),
    ("opportunities", "GET /v1/contacts/{contact_id}"): reading("contact", "GET", "/v1/contacts/{}"),
    ("opportunities", "PATCH /v1/contacts/{contact_id}"): changing(
        "contact", "PATCH", "/v1/contacts/{}", {"title": "采购经理"}),
    ("opportunities", "DELETE /v1/contacts/{contact_id}"): changing("contact", "DELETE", "/v1/contacts/{}"),
    ("opportunities", "POST /v1/contracts"): changing(
        "opportunity", "POST", "/v1/contracts", lambda deal, _owner: {"opportunity_id": deal}, state="won"),
    ("opportunities", "GET /v1/contracts"): _list_contracts,
    ("opportunities", "GET /v1/contracts/{contract_id}"): reading("contract", "GET", "/v1/contracts/{}"),
    ("opportunities", "POST /v1/contracts/{contract_id}/sign"): changing("contract", "POST", "/v1/contracts/{}/sign"),
    ("opportunities", "POST /v1/contracts/{contract_id}/execute"): changing(
        "contract", "POST", "/v1/contracts/{}/execute", state="signed"),
    ("opportunities", "POST /v1/contracts/{contract_id}/terminate"): changing(
        "contract", "POST", "/v1/contracts/{}/terminate", {"reason": "customer withdrew"}),
    ("opportunities", "POST /v1/opportunities/{opportunity_id}/quotes"): changing(
        "opportunity", "POST", OPPORTUNITY + "/quotes", quote_body()),
    ("opportunities", "GET /v1/quotes"): _list_quotes,
    ("opportunities", "GET /v1/quotes/{quote_id}"): reading("quote", "GET", "/v1/quotes/{}"),
    ("opportunities", "PUT /v1/quotes/{quote_id}"): changing(
        "quote", "PUT", "/v1/quotes/{}", {**quote_body(), "note": "revised"}),
    ("opportunities", "POST /v1/quotes/{quote_id}/submit"): changing("quote", "POST", "/v1/quotes/{}/submit", {}),
    ("opportunities", "POST /v1/quotes/{quote_id}/approve"): changing(
        "quote", "POST", "/v1/quotes/{}/approve", {}, state="pending_approval"),
    ("opportunities", "POST /v1/quotes/{quote_id}/reject"): changing(
        "quote", "POST", "/v1/quotes/{}/reject", {"reason": "discount too deep"}, state="pending_approval"),
    # scoring
    ("scoring", "GET /v1/leads/{lead_id}/score"): reading("lead-score", "GET", "/v1/leads/{}/score"),
    ("scoring", "GET /v1/leads/{lead_id}/score/history"): reading("lead-score", "GET", "/v1/leads/{}/score/history"),
    ("scoring", "GET /v1/opportunities/{opportunity_id}/score"): reading("opp-score", "GET", OPPORTUNITY + "/score"),
    ("scoring", "GET /v1/opportunities/{opportunity_id}/score/history"): reading(
        "opp-score", "GET", OPPORTUNITY + "/score/history"),
    ("scoring", "POST /v1/accounts/retier"): fixed("POST", "/v1/accounts/retier"),
    ("scoring", "GET /v1/accounts/{account_id}/tier"): reading("account-tier", "GET", "/v1/accounts/{}/tier"),
    ("scoring", "POST /v1/leads/rescore"): fixed("POST", "/v1/leads/rescore"),
    ("scoring", "POST /v1/opportunities/rescore"): fixed("POST", "/v1/opportunities/rescore"),
    # the model routes, by their path before and after scoring's models took a {kind}
    **{(service, path): recipe for service, route, recipe in (
        ("scoring", "GET /v1/models/lead", fixed("GET", "/v1/models/lead")),
        ("scoring", "POST /v1/models/lead/train", fixed("POST", "/v1/models/lead/train")),
        ("scoring", "POST /v1/models/lead/{version}/activate", fixed("POST", "/v1/models/lead/rules-v1/activate")),
    ) for path in (route, route.replace("/lead", "/{kind}"))},
    # forecasting
    ("forecasting", "GET /v1/forecast"): fixed("GET", "/v1/forecast", params={"period": PERIOD, "by": "owner"}),
    ("forecasting", "GET /v1/attainment"): fixed("GET", "/v1/attainment", params={"period": PERIOD}),
    ("forecasting", "PUT /v1/quotas/{owner_id}/{period}"): naming(
        "PUT", "/v1/quotas/{owner}/" + PERIOD, json=lambda _owner: {"amount": "1300000"}),
    ("forecasting", "GET /v1/forecast/history"): naming("GET", "/v1/forecast/history", params=lambda owner: {
        "period": PERIOD, "by": "owner", "key": owner}),
    ("forecasting", "GET /v1/forecast/bookings"): fixed(
        "GET", "/v1/forecast/bookings", params={"period": BOOKINGS_MONTH}),
    ("forecasting", "GET /v1/forecast/accuracy"): fixed("GET", "/v1/forecast/accuracy"),
    ("forecasting", "GET /v1/charts/forecast.svg"): fixed("GET", "/v1/charts/forecast.svg", params={"period": PERIOD}),
    ("forecasting", "GET /v1/funnel"): naming(
        "GET", "/v1/funnel", params=lambda owner: {"period": PERIOD, "owner_id": owner}),
    ("forecasting", "GET /v1/funnel/marketing"): fixed("GET", "/v1/funnel/marketing", params={"period": PERIOD}),
    ("forecasting", "GET /v1/charts/funnel.svg"): naming(
        "GET", "/v1/charts/funnel.svg", params=lambda owner: {"period": PERIOD, "owner_id": owner}),
    # notifications
    ("notifications", "GET /v1/rules"): fixed("GET", "/v1/rules"),
    ("notifications", "POST /v1/rules"): naming(
        "POST", "/v1/rules", json=lambda _owner: {**rule_body(), "id": f"authz-{uuid.uuid4().hex[:10]}"}),
    ("notifications", "PUT /v1/rules/{rule_id}"): changing("rule", "PUT", "/v1/rules/{}", rule_body()),
    ("notifications", "DELETE /v1/rules/{rule_id}"): changing("rule", "DELETE", "/v1/rules/{}"),
    ("notifications", "GET /v1/notifications"): fixed("GET", "/v1/notifications"),
    ("notifications", "GET /v1/notifications/{notification_id}"): reading(
        "notification", "GET", "/v1/notifications/{}"),
    ("notifications", "POST /v1/notifications/{notification_id}/read"): reading(
        "notification", "POST", "/v1/notifications/{}/read"),
    ("notifications", "POST /v1/notifications/read"): reading(
        "notification", "POST", "/v1/notifications/read", lambda notification, _owner: {"ids": [notification]}),
    ("notifications", "GET /v1/preferences"): fixed("GET", "/v1/preferences"),
    ("notifications", "PUT /v1/preferences"): fixed(
        "PUT", "/v1/preferences", json={"language": "en", "timezone": "Asia/Shanghai"}),
    ("notifications", "GET /v1/webhooks"): fixed("GET", "/v1/webhooks"),
    ("notifications", "POST /v1/webhooks"): naming("POST", "/v1/webhooks", json=lambda _owner: {
        "url": f"http://127.0.0.1:{free_port()}/hook", "event_types": [RARE_EVENT]}),
    ("notifications", "GET /v1/webhooks/{subscription_id}"): reading("subscription", "GET", "/v1/webhooks/{}"),
    ("notifications", "PATCH /v1/webhooks/{subscription_id}"): changing(
        "subscription", "PATCH", "/v1/webhooks/{}", {"enabled": False}),
    ("notifications", "DELETE /v1/webhooks/{subscription_id}"): changing("subscription", "DELETE", "/v1/webhooks/{}"),
    ("notifications", "GET /v1/webhooks/{subscription_id}/deliveries"): reading(
        "subscription", "GET", "/v1/webhooks/{}/deliveries"),
    ("notifications", "POST /v1/webhooks/{subscription_id}/deliveries/{delivery_id}/replay"): _replay_delivery,
    ("notifications", "POST /v1/webhooks/{subscription_id}/replay"): reading(
        "subscription", "POST", "/v1/webhooks/{}/replay", json={"since": SINCE}),
}


# --- the stack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A Postgres and a broker of this module's own (see the module docstring)."""
    root = tmp_path_factory.mktemp("authz")
    postgres = EmbeddedPostgres(root / "pg", free_port(), root / "postgres.log", settings={"fsync": "off"})
    broker = TansuBroker(free_port(), root / "tansu.log")
    postgres.start()
    try:
        broker.start()
        try:
            yield settings_for(postgres, broker, root / "home")
        finally:
            broker.stop()
    finally:
        postgres.stop()


@pytest.fixture(scope="module")
def service_urls(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Every service as its own process; its base URL by name."""
    instances = [ServiceInstance(name, 0, free_port()) for name in sorted(SERVICES)]
    stack = Stack(stack_settings, Path(tmp_path_factory.mktemp("authz-home")), instances, out=lambda _line: None)
    overrides = {
        # webhook targets in these tests are closed ports on loopback, never another address
        "FUNNELCAST_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
        # every caller posts the public form once: no cell may meet the per-address rate limit
        "FUNNELCAST_LEADS_WEB_FORM_PER_MINUTE": "1000",
    }
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        stack.start(ready_timeout=120)
        yield {i.name: f"http://127.0.0.1:{i.port}" for i in instances}
    finally:
        stack.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
async def world(service_urls: dict[str, str], stack_settings: Settings) -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=url, timeout=HTTP_TIMEOUT_S, limits=httpx.Limits(max_connections=CONCURRENCY)
                )
            )
            for name, url in service_urls.items()
        }
        yield World(clients, stack_settings.signing_secret)


# Lists of records every user may read, whoever owns them (docs/authorization.md says why).
SHARED_LISTS = {("opportunities", "GET /v1/accounts"), ("leads", "GET /v1/campaigns")}
ORG = cached_organisation(None)  # the sample organisation, as the services load it


def out_of_scope(user: str, response: httpx.Response) -> list[str]:
    """The owners in a list answer (`items` or forecast `rows` by owner) that `user` may not see."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return []
    body = response.json()
    if not isinstance(body, dict):
        return []
    member = ORG.user(user)
    assert member is not None, user
    visible = visible_owners(Principal(member.id, member.role, member.team), ORG)
    if visible is None:
        return []
    # An item is in scope when any of its owners is: a deal's co-owners (`owners`, splits) widen who sees it.
    holders = [[o.get("owner_id") for o in item.get("owners") or []] or [item.get("owner_id")]
               for item in body.get("items", []) if isinstance(item, dict)]
    if body.get("by") == "owner":
        holders += [[row.get("key")] for row in body.get("rows", []) if isinstance(row, dict)]
    return sorted({f"owner {', '.join(map(str, held))}" for held in holders
                   if held[0] is not None and visible.isdisjoint(held)})


async def served_routes(world: World) -> set[tuple[str, str]]:
    routes: set[tuple[str, str]] = set()
    for service, client in world.clients.items():
        spec = (await client.get("/openapi.json")).raise_for_status().json()
        for path, operations in spec["paths"].items():
            routes |= {(service, f"{method.upper()} {path}") for method in operations if method != "parameters"}
    return routes


async def test_every_route_answers_every_caller_as_the_table_says(world: World) -> None:
    expected = read_table()
    served = await served_routes(world)
    missing = sorted(served - set(expected))
    stale = sorted(set(expected) - served)
    unrecipied = sorted(served - set(RECIPES))
    assert not missing, "routes served but missing from docs/authorization.md:\n" + "\n".join(
        f"  {service} {route}" for service, route in missing)
    assert not stale, "rows of docs/authorization.md no service serves any more:\n" + "\n".join(
        f"  {service} {route}" for service, route in stale)
    assert not unrecipied, "routes this test cannot call yet (add a recipe):\n" + "\n".join(
        f"  {service} {route}" for service, route in unrecipied)

    gate = asyncio.Semaphore(CONCURRENCY)
    observed: dict[tuple[str, str], dict[str, int]] = {key: {} for key in expected}
    details: dict[tuple[str, str, str], str] = {}
    spent: dict[tuple[str, str], float] = {}
    malformed: list[str] = []  # refusals that do not say what they are as CONTRACT.md asks
    leaked: list[str] = []  # records of others in an answer the caller may see

    async def cell(service: str, route: str, caller_name: str) -> None:
        caller = CALLER_OF[caller_name]
        make = RECIPES[(service, route)]
        async with gate:
            if expected[(service, route)][caller_name] >= 400:
                # The cells the table says are refused share one request per route and record owner: a
                # refusal changes nothing (a cell wrongly allowed fails on its status all the same).
                call = await world.shared(f"refused {service} {route}", caller.target,
                                          lambda owner: make(world, owner))
            else:
                call = await make(world, caller.target)
            assert call.method == route.split(" ", 1)[0], f"the recipe for {route} sends {call.method} {call.path}"
            sent = time.monotonic()
            try:
                async with world.exclusive(call.exclusive):
                    if call.ready is not None:
                        await call.ready()
                    response = await world.send(service, call, world.token(caller))
            except httpx.TransportError as exc:  # reported with the other cells, not as the first failure alone
                observed[(service, route)][caller_name] = 0
                details[(service, route, caller_name)] = f"{exc!r} after {time.monotonic() - sent:.1f}s"
                return
        observed[(service, route)][caller_name] = response.status_code
        details[(service, route, caller_name)] = response.text[:200]
        spent[(service, route)] = spent.get((service, route), 0.0) + response.elapsed.total_seconds()
        if response.status_code == 200 and caller.user is not None and (service, route) not in SHARED_LISTS:
            leaked.extend(f"{service} {route} as {caller_name}: {item}" for item in out_of_scope(caller.user, response))
        if response.status_code >= 400 and not response.headers.get("content-type", "").startswith(PROBLEM_JSON):
            malformed.append(f"{service} {route} as {caller_name}: a {response.status_code} that is not {PROBLEM_JSON}")
        if response.status_code == 401 and not response.headers.get("www-authenticate", "").startswith("Bearer"):
            malformed.append(f"{service} {route} as {caller_name}: a 401 without WWW-Authenticate: Bearer")

    started = time.monotonic()
    await world.prepare()
    prepared = time.monotonic()
    await asyncio.gather(*(cell(s, r, c) for (s, r) in sorted(expected) for c in CALLERS))
    elapsed = time.monotonic() - prepared
    print(f"authorisation matrix: {len(expected) * len(CALLERS)} cells of {len(expected)} routes in {elapsed:.1f}s "
          f"(records through the broker first: {prepared - started:.1f}s)")
    slowest = sorted(spent.items(), key=lambda item: -item[1])[:5]
    print("slowest routes (seconds answering their cells):", ", ".join(f"{s} {r} {t:.1f}" for (s, r), t in slowest))

    wrong = []
    for (service, route), statuses in sorted(expected.items()):
        got = observed[(service, route)]
        differing = [c for c in CALLERS if got[c] != statuses[c]]
        if differing:
            reasons = "; ".join(f"{c}: {statuses[c]} expected, {got[c]} {details[(service, route, c)]}"
                                for c in differing)
            wrong.append(f"{markdown_row(service, route, got)}\n    {reasons}")
    assert not wrong, (
        f"{len(wrong)} of {len(expected)} routes answered otherwise than docs/authorization.md "
        f"(observed rows first):\n" + "\n".join(wrong)
    )
    assert not malformed, "\n".join(sorted(malformed))
    assert not leaked, "answers carrying records outside the caller's scope:\n" + "\n".join(sorted(leaked))
