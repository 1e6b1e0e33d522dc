"""The notifications service on the real runtime: a real Postgres, a broker of this module's own, the
leads service capturing through its API, the notifications service served by uvicorn on loopback
(WebSockets need a real server), a real SMTP server (aiosmtpd) and a real webhook receiver.

What it shows (issue 7): an H-grade lead reaches its rep's open WebSocket and inbox and not another
team's rep; missed notifications arrive on reconnect; redelivered events notify once (also across
consumer groups); rules are admin-edited and validated; e-mail arrives over SMTP; webhooks are signed
per Standard Webhooks, retried on schedule, dead-lettered, replayed, and a failing endpoint is
disabled with a notice to its owner; a reminder fires after its due time on a test clock, survives a
restart, and escalates to the manager.
"""

import asyncio
import base64
import contextlib
import email.policy
import hashlib
import hmac
import json
import logging
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from fastapi import FastAPI, Request, Response
from websockets.asyncio.client import ClientConnection, connect

from services.leads.main import service as leads_service
from services.notifications.clock import Clock
from services.notifications.config import NotificationsConfig
from services.notifications.main import service
from shared import kafka
from shared.auth import issue_token
from shared.context import trace_id_of
from shared.db import Database
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent
from shared.inbox import DeadLetters, EventProcessor, Message
from shared.logs import JsonFormatter
from shared.org import Role
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.service import create_service_app
from shared.settings import Settings
from tests.conftest import own_servers, settings_for
from tests.support.waiting import eventually, free_port

# The first wait covers the consumer group's join (about 3 s on Tansu) and its first fetches.
FIRST_TIMEOUT = 60.0
TIMEOUT = 30.0
SMTP_USER, SMTP_PASSWORD = "notifications", "smtp-" + secrets.token_hex(16)
ROLES = {"rep-1": Role.REP, "rep-2": Role.REP, "rep-3": Role.REP, "mgr-1": Role.MANAGER, "mgr-2": Role.MANAGER,
         "dir-1": Role.DIRECTOR, "admin-1": Role.ADMIN, "svc-erp": Role.INTEGRATION}


def token(settings: Settings, user: str) -> str:
    return issue_token(user, ROLES[user], settings.signing_secret, 3600)


def auth(settings: Settings, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(settings, user)}"}


# --- the real things around the service ------------------------------------------------------


class Mailbox:
    """An aiosmtpd handler keeping what it received, and the server's authenticator (SMTP AUTH)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.logins: list[str] = []
        self.busy_for = 0  # how many more messages to refuse with a temporary error

    def authenticate(self, server: object, session: object, envelope: object, mechanism: str,
                     auth_data: object) -> AuthResult:
        known = (isinstance(auth_data, LoginPassword) and auth_data.login == SMTP_USER.encode()
                 and auth_data.password == SMTP_PASSWORD.encode())
        if known:
            self.logins.append(SMTP_USER)
        return AuthResult(success=known)

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        if self.busy_for:
            self.busy_for -= 1
            return "451 4.3.0 mailbox busy, try again later"
        parsed = BytesParser(policy=email.policy.default).parsebytes(envelope.content)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 OK"


@dataclass
class Receiver:
    """A webhook endpoint on loopback: /ok answers 204, /fail answers 500 until told otherwise."""

    received: list[tuple[str, dict[str, str], bytes, float]] = field(default_factory=list)
    failing: set[str] = field(default_factory=lambda: {"fail", "disable"})

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{name}")
        async def hook(name: str, request: Request) -> Response:
            self.received.append((name, dict(request.headers), await request.body(), time.monotonic()))
            return Response(status_code=500 if name in self.failing else 204)

        return app

    def on(self, name: str) -> list[tuple[dict[str, str], bytes, float]]:
        return [(h, b, t) for n, h, b, t in self.received if n == name]


class Served:
    """An ASGI app served by uvicorn on a loopback port, in this event loop."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    lifespan="on", access_log=False))
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())

        async def started() -> bool:
            return self.server.started

        await eventually(started, timeout=60)

    async def stop(self) -> None:
        self.server.should_exit = True
        assert self.task is not None
        await self.task


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres, TansuBroker]]:
    """The service consumes every topic from the start; the session broker holds every earlier module's events."""
    yield from own_servers(tmp_path_factory, "notifications")


@pytest.fixture(scope="module")
async def settings(
    servers: tuple[EmbeddedPostgres, TansuBroker], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    home = tmp_path_factory.mktemp("notifications-home")
    configured = settings_for(*servers, home,
                              webhook_allowed_networks="127.0.0.0/8")
    await kafka.ensure_topics(configured)
    return configured


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), authenticator=box.authenticate,
                            auth_required=True, auth_require_tls=False)  # loopback only: no TLS needed
    controller.start()
    box.port = controller.port  # type: ignore[attr-defined]
    yield box
    controller.stop()


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    hooks = Receiver()
    served = Served(hooks.app())
    await served.start()
    yield hooks, served.url
    await served.stop()


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def config(mailbox: Mailbox) -> NotificationsConfig:
    return NotificationsConfig(
        smtp_host="127.0.0.1", smtp_port=mailbox.port,  # type: ignore[attr-defined]
        smtp_username=SMTP_USER, smtp_password=SMTP_PASSWORD,
        poll_interval_s=0.1, webhook_retry_base_s=0.3, webhook_retry_cap_s=2, webhook_max_attempts=3,
        webhook_disable_after=2, escalate_after_s=3600,
    )


def notifications_app(settings: Settings, config: NotificationsConfig, clock: Clock) -> FastAPI:
    app = create_service_app(service, settings)
    app.state.notifications_config = config
    app.state.clock = clock
    return app


@pytest.fixture(scope="module")
async def notifications(settings: Settings, config: NotificationsConfig, clock: Clock) -> AsyncIterator[Served]:
    served = Served(notifications_app(settings, config, clock))
    await served.start()
    yield served
    if not served.server.should_exit:
        await served.stop()


@pytest.fixture(scope="module")
async def http(notifications: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=notifications.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
async def leads(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(leads_service, settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://leads") as client:
            yield client


@pytest.fixture(scope="module")
async def tables(settings: Settings, notifications: Served) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url_for("notifications"), min_size=1, max_size=3)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    started = kafka.producer(settings)
    await started.start()
    yield started
    await started.stop()


# --- helpers ----------------------------------------------------------------------------------


def fresh_phone() -> str:
    n = uuid.uuid4().int % 10**8
    return f"139{n:08d}"


async def capture(leads: httpx.AsyncClient, settings: Settings, owner: str, grade: str = "H",
                  region: str = "华东", trace_id: str | None = None) -> str:
    body = {"contact": {"name": "王伟", "company": "上海星河科技", "phone": fresh_phone(), "email": None},
            "source": "web_form", "grade": grade, "region": region, "owner_id": owner}
    headers = auth(settings, "admin-1")
    if trace_id:
        headers["traceparent"] = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    response = await leads.post("/v1/leads", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def open_stream(notifications: Served, settings: Settings, user: str, since: str | None = None,
                      header: bool = False) -> ClientConnection:
    url = f"ws://127.0.0.1:{notifications.port}/v1/stream"
    headers = None
    if header:
        headers = {"Authorization": f"Bearer {token(settings, user)}"}
    else:
        url += f"?token={token(settings, user)}"
    if since:
        url += ("&" if "?" in url else "?") + f"since={since}"
    socket = await connect(url, additional_headers=headers)
    ready = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
    assert ready["type"] == "ready" and ready["user_id"] == user
    return socket


async def next_message(socket: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), timeout))
    return message


async def message_about(socket: ClientConnection, subject: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = await next_message(socket, max(0.1, deadline - time.monotonic()))
        if message["subject"] == subject:
            return message


async def inbox(http: httpx.AsyncClient, settings: Settings, user: str, **params: Any) -> dict[str, Any]:
    response = await http.get("/v1/notifications", params=params, headers=auth(settings, user))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def inbox_about(http: httpx.AsyncClient, settings: Settings, user: str, subject: str,
                      timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    async def found() -> list[dict[str, Any]]:
        return [n for n in (await inbox(http, settings, user, limit=500))["items"] if n["subject"] == subject]

    return await eventually(found, timeout=timeout)


async def send(producer: AIOKafkaProducer, event: CloudEvent) -> None:
    await producer.send_and_wait(event.topic, event.to_bytes(), key=event.subject.encode(),
                                 headers=[CONTENT_TYPE_HEADER])


def stage_changed(opportunity_id: str, to_stage: str = "negotiation", owner: str = "rep-2") -> CloudEvent:
    data = {"opportunity_id": opportunity_id, "from_stage": "bidding", "to_stage": to_stage, "probability": 60,
            "amount": "880000.00", "currency": "CNY", "owner_id": owner, "changed_by": owner,
            "changed_at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
    return CloudEvent(type="sales.opportunity.stage_changed.v1", source="/funnelcast/opportunities",
                      subject=opportunity_id, data=data, sequence=2)


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written from the specification (not the service's code)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(part.split(",", 1) == ["v1", expected] for part in headers["webhook-signature"].split(" "))


# --- push, inbox, reconnect -------------------------------------------------------------------


async def test_an_h_grade_lead_reaches_its_reps_socket_and_inbox_and_not_another_teams_rep(
    http: httpx.AsyncClient, leads: httpx.AsyncClient, notifications: Served, settings: Settings
) -> None:
    rep1 = await open_stream(notifications, settings, "rep-1")
    rep3 = await open_stream(notifications, settings, "rep-3", header=True)
    try:
        trace_id = uuid.uuid4().hex
        lead = await capture(leads, settings, "rep-1", trace_id=trace_id)
        pushed = await message_about(rep1, lead, timeout=FIRST_TIMEOUT)
        assert pushed["traceparent"].split("-")[1] == trace_id  # the capture request's trace
        assert pushed["event_type"] == "sales.lead.assigned.v1" and pushed["rule_id"] == "h-lead-assigned"
        assert pushed["title"] == f"新的H级线索：{lead}" and "H级线索" in pushed["body"]
        assert {"id", "title", "body", "created_at", "subject", "event_type"} <= set(pushed)
        assert pushed["priority"] == "high" and pushed["read"] is False

        [stored] = await inbox_about(http, settings, "rep-1", lead)
        assert stored["id"] == pushed["id"] and stored["read"] is False

        # The other team's rep: their first message is their own lead, never rep-1's.
        own = await capture(leads, settings, "rep-3", region="华北")
        first = await next_message(rep3)
        assert first["subject"] == own
        assert not [n for n in (await inbox(http, settings, "rep-3", limit=500))["items"] if n["subject"] == lead]
    finally:
        await rep1.close()
        await rep3.close()

    marked = await http.post(f"/v1/notifications/{pushed['id']}/read", headers=auth(settings, "rep-1"))
    assert marked.status_code == 200 and marked.json()["read"] is True
    assert not [n for n in (await inbox(http, settings, "rep-1", status="unread", limit=500))["items"]
                if n["id"] == pushed["id"]]
    other = await http.post(f"/v1/notifications/{pushed['id']}/read", headers=auth(settings, "rep-2"))
    assert other.status_code == 404  # not theirs


async def test_notifications_missed_while_disconnected_arrive_on_reconnect(
    http: httpx.AsyncClient, leads: httpx.AsyncClient, notifications: Served, settings: Settings
) -> None:
    socket = await open_stream(notifications, settings, "rep-2")
    first = await capture(leads, settings, "rep-2", grade="A")
    seen = await message_about(socket, first, timeout=FIRST_TIMEOUT)
    assert seen["rule_id"] == "lead-assigned"
    await socket.close()

    missed = [await capture(leads, settings, "rep-2", grade="B") for _ in range(2)]
    for lead in missed:
        await inbox_about(http, settings, "rep-2", lead)
    again = await open_stream(notifications, settings, "rep-2", since=seen["id"])
    try:
        replayed = [await next_message(again), await next_message(again)]
        # Two leads are two partition keys, so their notifications may be made in either order;
        # the replay must bring both, in the order they were made.
        assert sorted(m["subject"] for m in replayed) == sorted(missed)
        assert seen["seq"] < replayed[0]["seq"] < replayed[1]["seq"]
    finally:
        await again.close()


async def test_a_stream_without_a_valid_token_is_refused(notifications: Served) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    with pytest.raises((ConnectionClosed, InvalidStatus)):
        socket = await connect(f"ws://127.0.0.1:{notifications.port}/v1/stream?token=not-a-token")
        await asyncio.wait_for(socket.recv(), TIMEOUT)


# --- once only -----------------------------------------------------------------------------------


async def test_a_redelivered_event_notifies_once(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool,
    notifications: Served,
) -> None:
    opportunity = f"opp-{uuid.uuid4()}"
    event = stage_changed(opportunity)
    await send(producer, event)
    await send(producer, event)  # redelivery: the same event id
    follow = stage_changed(opportunity, "contract")
    await send(producer, follow)  # same key, same partition: once it is applied, both copies were processed
    await inbox_about(http, settings, "rep-2", opportunity, timeout=FIRST_TIMEOUT)

    async def follow_applied() -> bool:
        return bool(await tables.fetchval("SELECT count(*) FROM notifications WHERE cause_id = $1", follow.id))

    await eventually(follow_applied, timeout=TIMEOUT)
    rows = await tables.fetch("SELECT recipient, rule_id FROM notifications WHERE cause_id = $1 ORDER BY recipient",
                              event.id)
    assert [(r["recipient"], r["rule_id"]) for r in rows] == [
        ("mgr-1", "opportunity-stage-changed"), ("rep-2", "opportunity-stage-changed")]
    titles = sorted(n["title"] for n in await inbox_about(http, settings, "mgr-1", opportunity))
    assert titles == ["商机阶段变更：bidding → contract", "商机阶段变更：bidding → negotiation"]


async def test_the_same_event_applied_by_two_consumers_at_once_notifies_once(
    settings: Settings, tables: asyncpg.Pool, notifications: Served
) -> None:
    """Two instances racing on one event (here: two consumer groups, so the inbox does not stop the
    second): the (cause, rule, recipient) key in the store lets one notification through."""
    db = await Database.open(settings.database_url_for("notifications"), "/funnelcast/notifications", pool_size=4)
    producer = kafka.producer(settings)
    await producer.start()
    try:
        event = stage_changed(f"opp-{uuid.uuid4()}", owner="rep-1")
        message = Message("sales.opportunities", 0, 0, event.subject.encode(), event.to_bytes())
        processors = [EventProcessor(db, f"race-{i}-{uuid.uuid4()}", dict(service.handlers),
                                     DeadLetters(producer, "race")) for i in range(2)]
        outcomes = await asyncio.gather(*(p.process(message) for p in processors))
        assert [o.value for o in outcomes] == ["applied", "applied"]
        count = await tables.fetchval("SELECT count(*) FROM notifications WHERE cause_id = $1", event.id)
        assert count == 2  # the owner and the manager, once each
    finally:
        await producer.stop()
        await db.close()


def lead_assigned(lead_id: str, owner: str, previous: str | None = None) -> CloudEvent:
    now = datetime.now(UTC)
    data = {"lead_id": lead_id, "owner_id": owner, "previous_owner_id": previous, "grade": "H",
            "assigned_by": "system", "assigned_at": now.isoformat().replace("+00:00", "Z"),
            "follow_up_due_at": (now + timedelta(days=1)).isoformat().replace("+00:00", "Z")}
    return CloudEvent(type="sales.lead.assigned.v1", source="/funnelcast/leads", subject=lead_id, data=data)


def lead_contacted(lead_id: str, by: str) -> CloudEvent:
    data = {"lead_id": lead_id, "touch_id": f"touch-{uuid.uuid4()}", "channel": "phone",
            "contacted_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "contacted_by": by}
    return CloudEvent(type="sales.lead.contacted.v1", source="/funnelcast/leads", subject=lead_id, data=data)


@contextlib.asynccontextmanager
async def one_batch_consumer(settings: Settings) -> AsyncIterator[Callable[[list[CloudEvent]], Awaitable[list[str]]]]:
    """Applies events as the service's consumer applies one fetch: in one transaction, under a consumer
    group of its own; gives each event's outcome ("applied", "duplicate" ...)."""
    db = await Database.open(settings.database_url_for("notifications"), "/funnelcast/notifications", pool_size=2)
    producer = kafka.producer(settings)
    await producer.start()
    processor = EventProcessor(db, f"batch-{uuid.uuid4()}", dict(service.handlers), DeadLetters(producer, "batch"))

    async def apply(events: list[CloudEvent]) -> list[str]:
        messages = [Message(e.topic, 0, i, e.subject.encode(), e.to_bytes()) for i, e in enumerate(events)]
        return [outcome.value for outcome in await processor.process_batch(messages)]

    try:
        yield apply
    finally:
        await producer.stop()
        await db.close()


async def open_timers(tables: asyncpg.Pool, subject: str, kind: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await tables.fetch(
        "SELECT recipient, due_at FROM timers WHERE subject = $1 AND kind = $2 AND fired_at IS NULL"
        " AND cancelled_at IS NULL", subject, kind)
    return rows


async def test_a_batch_of_events_ends_as_if_its_events_were_applied_one_by_one(
    settings: Settings, tables: asyncpg.Pool, notifications: Served
) -> None:
    """A batch's notifications, timers and digest rows are written together before its commit: a
    lead contacted later in the batch has its reminder cancelled, a lead reassigned in it keeps only
    the new owner's, each assignment notifies its rep once, and the same batch again changes nothing."""
    async with one_batch_consumer(settings) as apply:
        contacted_lead, reassigned_lead = f"lead-{uuid.uuid4()}", f"lead-{uuid.uuid4()}"
        events = [lead_assigned(contacted_lead, "rep-1"), lead_assigned(reassigned_lead, "rep-1"),
                  lead_contacted(contacted_lead, "rep-1"), lead_assigned(reassigned_lead, "rep-2", "rep-1")]

        assert await apply(events) == ["applied"] * 4

        async def open_reminders(lead: str) -> list[str]:
            return [r["recipient"] for r in await open_timers(tables, lead, "follow-up-reminder")]

        async def state() -> tuple[list[tuple[str, str, str]], list[str], list[str], list[tuple[str, bool]]]:
            notified = await tables.fetch(
                "SELECT cause_id, recipient, rule_id FROM notifications WHERE subject = ANY($1::text[]) ORDER BY seq",
                [contacted_lead, reassigned_lead])
            watched = await tables.fetch(
                "SELECT owner_id, contacted_at IS NOT NULL AS contacted FROM lead_watch"
                " WHERE lead_id = ANY($1::text[]) ORDER BY lead_id = $2", [contacted_lead, reassigned_lead],
                contacted_lead)
            return ([(r["cause_id"], r["recipient"], r["rule_id"]) for r in notified],
                    await open_reminders(contacted_lead), await open_reminders(reassigned_lead),
                    [(r["owner_id"], r["contacted"]) for r in watched])

        applied = await state()
        assert applied == (
            [(events[0].id, "rep-1", "h-lead-assigned"), (events[1].id, "rep-1", "h-lead-assigned"),
             (events[3].id, "rep-2", "h-lead-assigned")],
            [], ["rep-2"], [("rep-2", False), ("rep-1", True)])

        assert await apply(events) == ["duplicate"] * 4
        assert await state() == applied


FOLLOW_UP = "follow-up-reminder"


def lead_merged(survivor: str, duplicate: str, **survivor_after: Any) -> CloudEvent:
    data = {"lead_id": survivor, "merged_lead_id": duplicate, "matched_on": [], "merged_by": "mgr-1",
            "merged_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "owner_id": "rep-1", **survivor_after}
    return CloudEvent(type="sales.lead.merged.v1", source="/funnelcast/leads", subject=survivor, data=data)


async def test_a_merge_closes_the_merged_lead_not_its_survivor(
    settings: Settings, tables: asyncpg.Pool, notifications: Served
) -> None:
    """The merge event's subject is the survivor: the merged lead is `merged_lead_id`. Its reminders stop
    and the digest leaves it out; the survivor stays open, its reminder kept (an older event, which tells
    nothing of the survivor), moved to the merge's earlier due time (still new) or stopped (contacted by
    the moved touches)."""
    async with one_batch_consumer(settings) as apply:
        leads = {name: f"lead-{uuid.uuid4()}" for name in ("kept", "moved", "contacted", "gone1", "gone2", "gone3")}
        sooner = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
        events = [lead_assigned(lead, "rep-1") for lead in leads.values()] + [
            lead_merged(leads["kept"], leads["gone1"]),
            lead_merged(leads["moved"], leads["gone2"], status="new", grade="H",
                        follow_up_due_at=sooner.isoformat().replace("+00:00", "Z")),
            lead_merged(leads["contacted"], leads["gone3"], status="contacted", grade="H", last_contacted_at=None,
                        follow_up_due_at=sooner.isoformat().replace("+00:00", "Z"))]
        assert await apply(events) == ["applied"] * len(events)

        reminders = {name: [(r["recipient"], r["due_at"]) for r in await open_timers(tables, lead, FOLLOW_UP)]
                     for name, lead in leads.items()}
        assigned_due = datetime.fromisoformat(events[0].data["follow_up_due_at"])
        assert reminders == {"kept": [("rep-1", assigned_due)], "moved": [("rep-1", sooner)], "contacted": [],
                             "gone1": [], "gone2": [], "gone3": []}
        closed = await tables.fetch("SELECT lead_id, closed FROM lead_watch WHERE lead_id = ANY($1::text[])",
                                    list(leads.values()))
        assert {r["lead_id"]: r["closed"] for r in closed} == {
            lead: name.startswith("gone") for name, lead in leads.items()}


def opportunity_event(kind: str, opportunity_id: str, at: datetime, sequence: int) -> CloudEvent:
    """An opportunity of rep-1's created, suspended or edited (its amount) at `at`."""
    stamp = at.isoformat().replace("+00:00", "Z")
    figures = {"opportunity_id": opportunity_id, "owner_id": "rep-1", "account_id": "acc-1", "stage": "bidding",
               "amount": "120000.00", "currency": "CNY", "expected_close_date": "2027-03-31"}
    data = {
        "created": {**figures, "name": "华东云平台", "status": "open", "probability": 40, "created_at": stamp,
                    "lead_id": None, "campaign_id": None},
        "suspended": {"opportunity_id": opportunity_id, "owner_id": "rep-1", "by": "rep-1", "reason": "客户预算冻结",
                      "at": stamp},
        "updated": {**figures, "product": None, "changed_fields": ["amount"], "changes": {"amount": "120000.00"},
                    "previous": {"amount": "100000.00"}, "changed_by": "rep-1", "changed_at": stamp},
    }[kind]
    return CloudEvent(type=f"sales.opportunity.{kind}.v1", source="/funnelcast/opportunities", subject=opportunity_id,
                      data=data, sequence=sequence, time=at)


async def test_an_edit_of_an_open_deal_restarts_its_idle_reminder_and_an_edit_of_a_suspended_one_none(
    settings: Settings, tables: asyncpg.Pool, config: NotificationsConfig, notifications: Served
) -> None:
    """sales.opportunity.updated.v1 is activity on the deal, as a stage change is; a suspended deal has no
    idle reminder, and editing it does not give it one. An edit delivered again changes nothing, even
    after a later one."""
    async with one_batch_consumer(settings) as apply:
        opened_at = datetime.now(UTC).replace(microsecond=0)
        edited_at = opened_at + timedelta(days=3)
        open_deal, suspended_deal = f"opp-{uuid.uuid4()}", f"opp-{uuid.uuid4()}"
        first_edit = opportunity_event("updated", open_deal, edited_at, 2)
        events = [opportunity_event("created", open_deal, opened_at, 1),
                  opportunity_event("created", suspended_deal, opened_at, 1),
                  opportunity_event("suspended", suspended_deal, opened_at + timedelta(days=1), 2),
                  first_edit,
                  opportunity_event("updated", suspended_deal, edited_at, 3)]

        assert await apply(events) == ["applied"] * 5

        due = [r["due_at"] for r in await open_timers(tables, open_deal, "opportunity-idle")]
        assert due == [edited_at + timedelta(days=config.opportunity_idle_days)]
        assert await open_timers(tables, suspended_deal, "opportunity-idle") == []

        edited_again_at = edited_at + timedelta(days=2)
        assert await apply([opportunity_event("updated", open_deal, edited_again_at, 3)]) == ["applied"]
        assert await apply([first_edit]) == ["duplicate"]
        due = [r["due_at"] for r in await open_timers(tables, open_deal, "opportunity-idle")]
        assert due == [edited_again_at + timedelta(days=config.opportunity_idle_days)]


# --- rules ------------------------------------------------------------------------------------


async def test_admins_change_rules_through_the_api_and_rules_are_validated(
    http: httpx.AsyncClient, leads: httpx.AsyncClient, settings: Settings, notifications: Served
) -> None:
    listed = await http.get("/v1/rules", headers=auth(settings, "rep-1"))
    assert {"h-lead-assigned", "contract-signed"} <= {r["id"] for r in listed.json()["items"]}

    rule = {
        "event_type": "sales.lead.captured.v1",
        "description": "Directors hear of every lead from a trade show",
        "conditions": [{"field": "source", "op": "eq", "value": "event"}],
        "recipients": [{"kind": "role", "value": "director"}],
        "channels": ["inbox"],
        "templates": {"zh-CN": {"title": "展会线索：{contact_company}", "body": "来源{source}，等级{grade}"},
                      "en": {"title": "Trade-show lead: {contact_company}", "body": "grade {grade}"}},
    }
    forbidden = await http.put("/v1/rules/trade-show-leads", json=rule, headers=auth(settings, "mgr-1"))
    assert forbidden.status_code == 403
    bad = await http.put("/v1/rules/trade-show-leads", headers=auth(settings, "admin-1"), json={
        **rule, "recipients": [{"kind": "user", "value": "nobody"}], "channels": ["fax"]})
    assert bad.status_code == 422
    assert "recipients[0].value" in bad.json()["detail"] and "channels" in bad.json()["detail"]
    created = await http.put("/v1/rules/trade-show-leads", json=rule, headers=auth(settings, "admin-1"))
    assert created.status_code == 201, created.text

    body = {"contact": {"name": "周先生", "company": "深圳展会客户", "phone": fresh_phone(), "email": None},
            "source": "event", "grade": "B", "region": "华东"}
    response = await leads.post("/v1/leads", json=body, headers=auth(settings, "admin-1"))
    assert response.status_code == 201, response.text
    [notice] = await inbox_about(http, settings, "dir-1", response.json()["id"], timeout=FIRST_TIMEOUT)
    assert notice["title"] == "展会线索：深圳展会客户" and notice["event_type"] == "sales.lead.captured.v1"

    deleted = await http.delete("/v1/rules/trade-show-leads", headers=auth(settings, "admin-1"))
    assert deleted.status_code == 204
    assert (await http.delete("/v1/rules/trade-show-leads", headers=auth(settings, "admin-1"))).status_code == 404


async def test_preferences_round_trip_and_english_templates(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, notifications: Served
) -> None:
    put = await http.put("/v1/preferences", headers=auth(settings, "mgr-2"), json={
        "language": "en", "opted_out": ["email"], "quiet_hours": {"start": "22:00", "end": "07:30"},
        "timezone": "Asia/Shanghai"})
    assert put.status_code == 200, put.text
    got = await http.get("/v1/preferences", headers=auth(settings, "mgr-2"))
    assert got.json() == {"language": "en", "opted_out": ["email"],
                          "quiet_hours": {"start": "22:00", "end": "07:30"}, "timezone": "Asia/Shanghai"}
    bad = await http.put("/v1/preferences", headers=auth(settings, "mgr-2"), json={"timezone": "Mars/Base"})
    assert bad.status_code == 422

    opportunity = f"opp-{uuid.uuid4()}"
    await send(producer, stage_changed(opportunity, owner="rep-3"))
    [notice] = await inbox_about(http, settings, "mgr-2", opportunity, timeout=FIRST_TIMEOUT)
    assert notice["title"] == "Opportunity stage: bidding → negotiation"
    assert "email" not in notice["channels"]


# --- e-mail -----------------------------------------------------------------------------------


class JsonLines(logging.Handler):
    """A logger's records as the service's JSON log lines, formatted as they are emitted (in the
    emitting task's context, which is where the trace id comes from)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("notifications"))
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_an_h_grade_lead_is_also_mailed_to_its_rep(
    leads: httpx.AsyncClient, settings: Settings, mailbox: Mailbox, notifications: Served, clock: Clock
) -> None:
    # The first try meets a busy mailbox: its log line carries the trace of the capture that caused it.
    worker_log = JsonLines()
    logging.getLogger("services.notifications.workers").addHandler(worker_log)
    mailbox.busy_for = 1
    trace_id = uuid.uuid4().hex
    try:
        lead = await capture(leads, settings, "rep-2", trace_id=trace_id)

        async def refused() -> list[dict[str, Any]]:
            return [line for line in worker_log.lines if "451" in line["message"]]

        [line] = await eventually(refused, timeout=FIRST_TIMEOUT)
    finally:
        logging.getLogger("services.notifications.workers").removeHandler(worker_log)
    assert line["trace_id"] == trace_id and line["level"] == "warning", line
    clock.advance(timedelta(seconds=61))  # the retry after a first failure is due 60 s later

    async def mailed() -> list[tuple[str, list[str], EmailMessage]]:
        return [m for m in mailbox.messages if lead in str(m[2]["Subject"])]

    [(sender, recipients, message)] = await eventually(mailed, timeout=FIRST_TIMEOUT)
    assert recipients == ["rep-2@funnelcast.test"] and sender == "notifications@funnelcast.local"
    assert SMTP_USER in mailbox.logins  # sent after SMTP AUTH with the configured password
    assert message["Subject"] == f"新的H级线索：{lead}"
    body = message.get_body()
    assert body is not None and "H级线索（5天内购买）已分配给您" in body.get_content()


# --- webhooks ---------------------------------------------------------------------------------


async def subscribe(http: httpx.AsyncClient, settings: Settings, url: str, types: list[str],
                    secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "event_types": types}
    if secret:
        body["secret"] = secret
    response = await http.post("/v1/webhooks", json=body, headers=auth(settings, "svc-erp"))
    assert response.status_code == 201, response.text
    return dict(response.json())


async def deliveries(http: httpx.AsyncClient, settings: Settings, subscription: str, **params: Any
                     ) -> list[dict[str, Any]]:
    response = await http.get(f"/v1/webhooks/{subscription}/deliveries", params=params,
                              headers=auth(settings, "svc-erp"))
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_a_webhook_receives_a_signed_cloud_event(
    http: httpx.AsyncClient, leads: httpx.AsyncClient, settings: Settings, receiver: tuple[Receiver, str],
    notifications: Served,
) -> None:
    hooks, url = receiver
    subscription = await subscribe(http, settings, f"{url}/ok", ["sales.lead.captured.v1"])
    secret = subscription["secret"]
    assert secret.startswith("whsec_")
    trace_id = uuid.uuid4().hex
    lead = await capture(leads, settings, "rep-1", grade="C", trace_id=trace_id)

    async def arrived() -> list[tuple[dict[str, str], bytes, float]]:
        return [r for r in hooks.on("ok") if json.loads(r[1])["subject"] == lead]

    [(headers, body, _)] = await eventually(arrived, timeout=FIRST_TIMEOUT)
    assert verify_signature(secret, headers, body)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["content-type"] == "application/cloudevents+json"
    event = json.loads(body)
    # The POST continues the event's trace (the capture request's) as a span of its own.
    assert trace_id_of(headers["traceparent"]) == trace_id == trace_id_of(event["traceparent"])
    assert headers["traceparent"] != event["traceparent"]
    assert event["type"] == "sales.lead.captured.v1" and event["specversion"] == "1.0"
    assert event["data"]["lead_id"] == lead and event["source"] == "/funnelcast/leads"
    assert not verify_signature(secret, headers, body + b" ")

    async def logged() -> list[dict[str, Any]]:
        return [d for d in await deliveries(http, settings, subscription["id"], status="succeeded")
                if d["event_id"] == event["id"]]

    [entry] = await eventually(logged, timeout=TIMEOUT)
    assert entry["attempts"] == 1 and entry["attempt_log"][0]["status_code"] == 204


async def test_a_failing_endpoint_is_retried_on_schedule_dead_lettered_and_replayed(
    http: httpx.AsyncClient, leads: httpx.AsyncClient, settings: Settings, receiver: tuple[Receiver, str],
    notifications: Served,
) -> None:
    hooks, url = receiver
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    subscription = await subscribe(http, settings, f"{url}/fail", ["sales.lead.assigned.v1"], secret=secret)
    assert "secret" not in subscription  # given by the caller: not echoed
    lead = await capture(leads, settings, "rep-2", grade="C")

    async def dead() -> list[dict[str, Any]]:
        return await deliveries(http, settings, subscription["id"], status="dead")

    [delivery] = await eventually(dead, timeout=FIRST_TIMEOUT)
    assert delivery["attempts"] == 3 and delivery["last_status"] == 500
    assert [a["attempt"] for a in delivery["attempt_log"]] == [1, 2, 3]
    tries = [t for h, b, t in hooks.on("fail") if json.loads(b)["subject"] == lead]
    assert len(tries) == 3
    assert len({h["webhook-id"] for h, b, t in hooks.on("fail") if json.loads(b)["subject"] == lead}) == 1
    gaps = [later - earlier for earlier, later in zip(tries, tries[1:], strict=False)]
    # base 0.3 s, doubled, drawn from [half, full]: at least 0.15 s, then at least 0.3 s
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3, gaps

    hooks.failing.discard("fail")  # the endpoint is repaired
    replay = await http.post(f"/v1/webhooks/{subscription['id']}/deliveries/{delivery['id']}/replay",
                             headers=auth(settings, "svc-erp"))
    assert replay.status_code == 202, replay.text

    async def redelivered() -> list[dict[str, Any]]:
        return [d for d in await deliveries(http, settings, subscription["id"], status="succeeded")
                if d["replay_of"] == delivery["id"]]

    [again] = await eventually(redelivered, timeout=TIMEOUT)
    headers, body, _ = hooks.on("fail")[-1]
    assert verify_signature(secret, headers, body) and json.loads(body)["subject"] == lead
    assert again["event_id"] == delivery["event_id"]

    since = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    ranged = await http.post(f"/v1/webhooks/{subscription['id']}/replay", json={"since": since},
                             headers=auth(settings, "svc-erp"))
    assert ranged.status_code == 202 and ranged.json()["count"] == 1

    async def twice() -> bool:
        return len([d for d in await deliveries(http, settings, subscription["id"], status="succeeded")
                    if d["event_id"] == delivery["event_id"]]) == 2

    await eventually(twice, timeout=TIMEOUT)


async def test_an_endpoint_that_keeps_failing_is_disabled_and_its_owner_told(
    http: httpx.AsyncClient, leads: httpx.AsyncClient, settings: Settings, receiver: tuple[Receiver, str],
    notifications: Served,
) -> None:
    _, url = receiver
    subscription = await subscribe(http, settings, f"{url}/disable", ["sales.lead.captured.v1"])
    for _ in range(2):
        await capture(leads, settings, "rep-1", grade="C")

    async def disabled() -> dict[str, Any] | None:
        response = await http.get(f"/v1/webhooks/{subscription['id']}", headers=auth(settings, "svc-erp"))
        body = dict(response.json())
        return body if not body["enabled"] else None

    state = await eventually(disabled, timeout=FIRST_TIMEOUT)
    assert "2 deliveries in a row" in state["disabled_reason"]
    [notice] = await inbox_about(http, settings, "svc-erp", subscription["id"])
    assert notice["title"] == f"Webhook已停用：{url}/disable"
    enabled = await http.patch(f"/v1/webhooks/{subscription['id']}", json={"enabled": True},
                               headers=auth(settings, "svc-erp"))
    assert enabled.json()["enabled"] is True and enabled.json()["consecutive_failures"] == 0


async def test_webhook_secrets_and_the_smtp_password_are_never_returned_again_nor_logged(
    http: httpx.AsyncClient, leads: httpx.AsyncClient, settings: Settings, receiver: tuple[Receiver, str],
    mailbox: Mailbox, notifications: Served, config: NotificationsConfig, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # everything the service (and its libraries) log, in this process
    hooks, url = receiver
    generated = await subscribe(http, settings, f"{url}/secret-keeper", ["sales.lead.assigned.v1"])
    given_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    given = await subscribe(http, settings, f"{url}/secret-keeper", ["sales.lead.assigned.v1"], secret=given_secret)
    assert generated["secret"].startswith("whsec_") and "secret" not in given  # shown once, when generated
    lead = await capture(leads, settings, "rep-2")  # H grade: both webhooks and an e-mail (after SMTP AUTH)

    async def delivered_and_mailed() -> bool:
        signed = [h for h, b, _ in hooks.on("secret-keeper") if json.loads(b)["subject"] == lead]
        mailed = [m for m in mailbox.messages if lead in str(m[2]["Subject"])]
        return len(signed) == 2 and len(mailed) == 1

    await eventually(delivered_and_mailed, timeout=FIRST_TIMEOUT)
    headers = auth(settings, "svc-erp")
    answers = [(await http.get("/v1/webhooks", headers=headers)).text]
    for subscription in (generated, given):
        path = f"/v1/webhooks/{subscription['id']}"
        answers += [(await http.get(path, headers=headers)).text,
                    (await http.patch(path, json={"enabled": True}, headers=headers)).text,
                    (await http.get(f"{path}/deliveries", headers=headers)).text]
    # the service's own log records (not those of this test's SMTP server, which sees the login)
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records if not r.name.startswith("mail"))
    assert logged, "nothing was logged: the check would prove nothing"
    assert config.smtp_password is not None and SMTP_PASSWORD not in repr(config) + str(config)
    plain_login = base64.b64encode(f"\0{SMTP_USER}\0{SMTP_PASSWORD}".encode()).decode()
    for secret in (generated["secret"], given_secret, generated["secret"].removeprefix("whsec_"),
                   given_secret.removeprefix("whsec_"), SMTP_PASSWORD, plain_login):
        for answer in answers:
            assert secret not in answer
        assert secret not in logged
    for subscription in (generated, given):
        assert (await http.delete(f"/v1/webhooks/{subscription['id']}", headers=headers)).status_code == 204


async def test_webhook_targets_on_private_networks_are_refused_unless_allowed(
    http: httpx.AsyncClient, settings: Settings, notifications: Served
) -> None:
    for url, kind in (("http://10.0.0.5/hook", "private"), ("http://192.168.1.1/hook", "private"),
                      ("http://169.254.169.254/latest", "metadata"), ("http://[fe80::1]/hook", "link-local")):
        refused = await http.post("/v1/webhooks", json={"url": url, "event_types": ["sales.lead.captured.v1"]},
                                  headers=auth(settings, "svc-erp"))
        assert refused.status_code == 422 and f"a {kind} address" in refused.json()["detail"], url
    bad_type = await http.post("/v1/webhooks", json={"url": "http://127.0.0.1:1/x", "event_types": ["nope"]},
                               headers=auth(settings, "svc-erp"))
    assert bad_type.status_code == 422
    rep = await http.post("/v1/webhooks", json={"url": "http://127.0.0.1:1/x", "event_types": ["nope"]},
                          headers=auth(settings, "rep-1"))
    assert rep.status_code == 403


# --- the console in a browser -------------------------------------------------------------------


def _chrome() -> Any:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("the console's browser test needs Debian's chromium and chromium-driver packages")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


async def test_the_console_shows_a_notification_arriving_live_in_headless_chromium(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, notifications: Served
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = await asyncio.to_thread(_chrome)  # selenium blocks: keep it off the loop serving the app
    try:
        def sign_in() -> str:
            browser.get(f"{notifications.url}/console")
            browser.find_element(By.ID, "token").send_keys(token(settings, "rep-1"))
            browser.find_element(By.CSS_SELECTOR, "#signin button").click()
            WebDriverWait(browser, TIMEOUT).until(
                lambda b: b.find_element(By.ID, "status").text == "已连接（实时）")
            return str(browser.find_element(By.TAG_NAME, "html").get_attribute("lang"))

        assert await asyncio.to_thread(sign_in) == "zh-CN"
        opportunity = f"opp-{uuid.uuid4()}"
        await send(producer, stage_changed(opportunity, owner="rep-1"))

        def arrived() -> tuple[str, str]:
            item = WebDriverWait(browser, TIMEOUT).until(
                lambda b: next((li for li in b.find_elements(By.CSS_SELECTOR, "#items li")
                                if opportunity in li.text), None))
            title = item.find_element(By.CLASS_NAME, "title").text
            unread_class = str(item.get_attribute("class"))
            item.find_element(By.CSS_SELECTOR, "button.mark").click()
            WebDriverWait(browser, TIMEOUT).until(lambda b: "unread" not in str(item.get_attribute("class")))
            return title, unread_class

        title, unread_class = await asyncio.to_thread(arrived)
        assert title == "商机阶段变更：bidding → negotiation" and "unread" in unread_class
        [stored] = await inbox_about(http, settings, "rep-1", opportunity)
        assert stored["read"] is True  # marked read from the page
    finally:
        await asyncio.to_thread(browser.quit)


# --- timers -----------------------------------------------------------------------------------


async def test_a_missed_follow_up_reminds_the_rep_survives_a_restart_and_escalates_to_the_manager(
    http: httpx.AsyncClient, leads: httpx.AsyncClient, notifications: Served, settings: Settings,
    config: NotificationsConfig, clock: Clock, tables: asyncpg.Pool,
) -> None:
    lead = await capture(leads, settings, "rep-1", grade="A")

    async def timer() -> asyncpg.Record | None:
        row: asyncpg.Record | None = await tables.fetchrow(
            "SELECT * FROM timers WHERE subject = $1 AND kind = 'follow-up-reminder'", lead)
        return row

    reminder = await eventually(timer, timeout=FIRST_TIMEOUT)
    assert reminder["recipient"] == "rep-1" and reminder["due_at"] > clock.now()

    await notifications.stop()  # the service goes down with the timer pending
    restarted = Served(notifications_app(settings, config, clock))
    await restarted.start()
    try:
        clock.advance(reminder["due_at"] - clock.now() + timedelta(seconds=1))
        async with httpx.AsyncClient(base_url=restarted.url, timeout=30) as client:
            [notice] = await _reminders(client, settings, "rep-1", lead)
            assert notice["title"] == f"跟进提醒：线索{lead}"
            assert notice["event_type"] == "notifications.timer.follow-up-reminder"

            clock.advance(timedelta(seconds=config.escalate_after_s))
            [escalation] = await _reminders(client, settings, "mgr-1", lead, "follow-up-escalation")
            assert escalation["title"] == f"升级提醒：王芳的线索{lead}未跟进"
    finally:
        await restarted.stop()


async def _reminders(client: httpx.AsyncClient, settings: Settings, user: str, lead: str,
                     rule: str = "follow-up-reminder") -> list[dict[str, Any]]:
    async def found() -> list[dict[str, Any]]:
        items = (await inbox(client, settings, user, limit=500))["items"]
        return [n for n in items if n["subject"] == lead and n["rule_id"] == rule]

    return await eventually(found, timeout=TIMEOUT)


async def test_a_daily_digest_lists_overdue_follow_ups_and_deals_closing_this_week(
    settings: Settings, config: NotificationsConfig, clock: Clock, tables: asyncpg.Pool, producer: AIOKafkaProducer,
) -> None:
    """After the restart test: rep-1's leads are long overdue on the moved clock."""
    served = Served(notifications_app(settings, config, clock))
    await served.start()
    try:
        async def pending() -> asyncpg.Record | None:
            row: asyncpg.Record | None = await tables.fetchrow(
                "SELECT * FROM timers WHERE kind = 'daily-digest' AND fired_at IS NULL AND cancelled_at IS NULL")
            return row

        digest_timer = await eventually(pending, timeout=TIMEOUT)
        local_day = digest_timer["due_at"].astimezone(ZoneInfo("Asia/Shanghai")).date()
        opportunity = f"opp-{uuid.uuid4()}"
        created = CloudEvent(type="sales.opportunity.created.v1", source="/funnelcast/opportunities",
                             subject=opportunity, sequence=1, data={
                                 "opportunity_id": opportunity, "name": "华北数据中心项目", "account_id": "acc-1",
                                 "stage": "negotiation", "status": "open", "probability": 60, "amount": "500000.00",
                                 "currency": "CNY", "owner_id": "rep-3",
                                 "expected_close_date": (local_day + timedelta(days=2)).isoformat(),
                                 "created_at": clock.now().isoformat(), "lead_id": None, "campaign_id": None})
        await send(producer, created)

        async def watched() -> bool:
            return bool(await tables.fetchval(
                "SELECT count(*) FROM opportunity_watch WHERE opportunity_id = $1", opportunity))

        await eventually(watched, timeout=FIRST_TIMEOUT)
        clock.advance(digest_timer["due_at"] - clock.now() + timedelta(seconds=1))
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            [north] = await _reminders(client, settings, "rep-3", digest_timer["subject"], "daily-digest")
            assert opportunity in north["body"] and "1个商机本周预计成交" in north["title"]
            [east] = await _reminders(client, settings, "rep-1", digest_timer["subject"], "daily-digest")
            assert not east["title"].startswith("每日摘要：0条逾期跟进")
            assert opportunity not in east["body"]

        async def next_scheduled() -> asyncpg.Record | None:
            row = await pending()
            return row if row is not None and row["due_at"] > digest_timer["due_at"] else None

        following = await eventually(next_scheduled, timeout=TIMEOUT)
        assert following["due_at"] - digest_timer["due_at"] == timedelta(days=1)
    finally:
        await served.stop()
