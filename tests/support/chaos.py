"""Fault injection against the real embedded stack, and the reconciliation of every effect with its cause.

Used by tests/reliability (a reduced run) and bench/chaos.py (the long run). `ChaosStack` runs a Postgres
and a Tansu broker of its own (so they can be killed) and the five services as `funnelcast up` runs them
(shared/runtime/supervisor.py Stack). `Workload` drives the whole flow over HTTP: captures, touches,
grades, qualification, conversions (the opportunities service opens the deal from the event), and
opportunities moved through their stages to a signed contract, retrying what a fault interrupted.
`reconcile` then checks, across the services' stores, that every published event was applied by every
service that consumes it (its inbox row commits with the effect), and that nothing was applied twice
(no consumed event caused the same effect twice). A `WebhookReceiver` on 127.0.0.1, subscribed to a few
event types through the notifications API, is reconciled the same way: every event of those types
delivered under exactly one distinct `webhook-id`; a `webhook-id` delivered again (a retry after a lost
answer, which Standard Webhooks allows) is counted apart.
"""

import asyncio
import contextlib
import importlib
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from shared import kafka
from shared.auth import issue_token
from shared.events.catalog import event_type
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.runtime.supervisor import ServiceInstance, Stack
from shared.settings import Settings, with_database
from shared.topology import SERVICES, TOPICS
from tests.support.waiting import eventually, free_port

TRANSIENT_STATUSES = {500, 502, 503, 504}
REQUEST_DEADLINE_S = 120.0
REQUESTS_PER_FLOW = 13
# What the webhook receiver subscribes to: captures and stage moves (published by the API), signatures
# (a contract), and scores (caused by another service's consumption).
WEBHOOK_EVENT_TYPES = ("sales.lead.captured.v1", "sales.opportunity.stage_changed.v1", "sales.contract.signed.v1",
                       "sales.lead.scored.v1")


# --- the webhook receiver -----------------------------------------------------------------------


class WebhookReceiver:
    """An HTTP endpoint on 127.0.0.1 that answers 204 and records each delivery's `webhook-id` and event id,
    on arrival; `answer_delay_s` later than that it answers (a slow subscriber keeps deliveries in flight).
    A request whose body did not arrive whole is no delivery: it is neither recorded nor answered.

    A thread of its own (and one per connection), so it answers whatever event loop the caller runs."""

    def __init__(self, answer_delay_s: float = 0.0) -> None:
        self.answer_delay_s = answer_delay_s
        self._lock = threading.Lock()
        self._deliveries: list[tuple[str, str]] = []  # (webhook-id, CloudEvent id), in arrival order
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the notifications service's client expects

            def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender went away mid-request: a fault SIGKILLed the notifications service after
                    # it wrote a request's headers (httpcore writes the body separately, after yielding to
                    # its event loop). Nothing was delivered and nothing is answered: the delivery is due
                    # again when its lease ends and is sent whole under the same webhook-id.
                    self.close_connection = True
                    return
                try:
                    event_id = str(json.loads(body)["id"])
                except (ValueError, KeyError, TypeError):
                    event_id = ""
                receiver._record(self.headers.get("webhook-id", ""), event_id)
                time.sleep(receiver.answer_delay_s)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the overridden signature
                return None

        class Server(ThreadingHTTPServer):
            # With socketserver's default listen backlog (5), some of the 16 connections a delivery worker
            # opens at once failed with ReadError under load, to be retried seconds later (2 of 3 runs;
            # none in 3 runs with this one)
            request_queue_size = 128

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _record(self, webhook_id: str, event_id: str) -> None:
        with self._lock:
            self._deliveries.append((webhook_id, event_id))

    def deliveries(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._deliveries)


# --- the stack ----------------------------------------------------------------------------------


class ChaosStack:
    """Postgres, a broker and the five service processes, each of which a fault can kill."""

    def __init__(self, root: Path, ready_timeout: float = 120.0) -> None:
        self.root = root
        self.ready_timeout = ready_timeout
        self.postgres = EmbeddedPostgres(root / "postgres", free_port(), root / "postgres.log",
                                         settings={"fsync": "off"})
        self.broker = TansuBroker(free_port(), root / "tansu.log")
        self.settings: Settings | None = None
        self.stack: Stack | None = None
        self.instances: dict[str, ServiceInstance] = {}
        self.consumed: dict[str, set[str]] = {}  # what the started services consume, as started
        self.webhooks = WebhookReceiver()

    def start(self) -> None:
        self.postgres.start()
        self.broker.start()
        self.webhooks.start()
        self.settings = Settings(
            database_url=self.postgres.url, kafka_bootstrap=self.broker.bootstrap, kafka_idempotence=False,
            home=self.root / "home", log_level="WARNING",
        )
        self.instances = {name: ServiceInstance(name, 0, free_port()) for name in SERVICES}
        self.consumed = consumed_types()
        self.stack = Stack(self.settings, self.root / "home", list(self.instances.values()), out=lambda _: None,
                           extra_env={"FUNNELCAST_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"})
        self.stack.start(ready_timeout=self.ready_timeout)
        self._subscribe_webhooks()

    def _subscribe_webhooks(self) -> None:
        assert self.settings is not None
        token = issue_token("admin-1", "admin", self.settings.signing_secret, 3600)
        answer = httpx.post(f"{self.url('notifications')}/v1/webhooks", timeout=30,
                            headers={"Authorization": f"Bearer {token}"},
                            json={"url": self.webhooks.url, "event_types": list(WEBHOOK_EVENT_TYPES)})
        answer.raise_for_status()

    def stop(self) -> None:
        if self.stack is not None:
            with contextlib.suppress(Exception):
                self.stack.stop()
        self.thaw_broker()  # a stopped process cannot act on SIGTERM
        self.broker.stop()
        self.postgres.stop()
        self.webhooks.stop()

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.instances[service].port}"

    # --- faults ---

    def kill_broker(self) -> None:
        """SIGKILL the broker: it forgets every topic and committed offset."""
        self.broker.kill()

    def start_broker(self) -> None:
        self.broker.start()  # new, empty, with a new cluster id

    def freeze_broker(self) -> None:
        """SIGSTOP the broker: unreachable, as behind a network partition. Connections stay open and new
        ones are even accepted by the kernel, but nothing is answered; its state is kept."""
        if self.broker.pid is not None:
            os.kill(self.broker.pid, signal.SIGSTOP)

    def thaw_broker(self) -> None:
        """SIGCONT: the same broker (same cluster id, topics and offsets) answers again."""
        if self.broker.pid is not None:
            os.kill(self.broker.pid, signal.SIGCONT)

    def kill_service(self, name: str) -> None:
        assert self.stack is not None
        child = self.stack.children[name]
        child.kill()
        child.wait()

    def start_service(self, name: str) -> None:
        assert self.stack is not None
        self.stack._start_service(self.instances[name])  # noqa: SLF001 - as `funnelcast up` starts it
        self.stack._wait_ready(self.ready_timeout)  # noqa: SLF001

    def stop_postgres(self) -> None:
        self.postgres.stop()

    def start_postgres(self) -> None:
        self.postgres.start()


# --- the workload -------------------------------------------------------------------------------


@dataclass
class Workload:
    """The whole flow over HTTP, as an admin, retrying requests a fault interrupted."""

    stack: ChaosStack
    concurrency: int = 8
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    requests: int = 0
    retries: int = 0
    _clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    async def __aenter__(self) -> "Workload":
        settings = self.stack.settings
        assert settings is not None
        token = issue_token("admin-1", "admin", settings.signing_secret, 24 * 3600)
        for name in SERVICES:
            self._clients[name] = httpx.AsyncClient(
                base_url=self.stack.url(name), headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
        return self

    async def __aexit__(self, *_: object) -> None:
        for client in self._clients.values():
            await client.aclose()

    async def call(self, service: str, path: str, body: dict[str, Any] | None = None,
                   ok: tuple[int, ...] = (200, 201), after_retry: tuple[int, ...] = (),
                   headers: dict[str, str] | None = None) -> httpx.Response:
        """POST until an answer in `ok` (or, once retried, in `after_retry`: the first try may have
        committed before the fault cut the answer off)."""
        deadline = time.monotonic() + REQUEST_DEADLINE_S
        retried = False
        while True:
            self.requests += 1
            try:
                response = await self._clients[service].post(path, json=body, headers=headers)
                if response.status_code in ok or (retried and response.status_code in after_retry):
                    return response
                if response.status_code not in TRANSIENT_STATUSES:
                    raise AssertionError(f"POST {service}{path}: {response.status_code} {response.text}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"POST {service}{path} did not succeed within {REQUEST_DEADLINE_S:.0f} s")
            retried = True
            self.retries += 1
            await asyncio.sleep(0.2)

    async def capture_once(self, n: int) -> tuple[int, float]:
        """One capture, not retried: (HTTP status, seconds it took); 0 when no answer came."""
        started = time.monotonic()
        try:
            response = await self._clients["leads"].post("/v1/leads", json={
                "contact": {"name": f"Outage {n}", "email": f"outage-{self.run}-{n}@example.com"},
                "owner_id": "rep-1", "source": "api",
            })
            status = response.status_code
        except httpx.TransportError:
            status = 0
        self.requests += 1
        return status, time.monotonic() - started

    async def flow(self, n: int) -> None:
        """One lead through to conversion, and one opportunity through to a signed contract."""
        email = f"chaos-{self.run}-{n}@example.com"
        captured = await self.call("leads", "/v1/leads", {
            "contact": {"name": f"Chaos {n}", "email": email, "company": f"Chaos {self.run} {n}"},
            "owner_id": "rep-1", "source": "api",
        })
        lead = captured.json()
        lead_id = lead.get("id") or lead["duplicate_of"]  # 200: a retried capture that had committed
        await self.call("leads", f"/v1/leads/{lead_id}/touches", {"channel": "phone"})
        await self.call("leads", f"/v1/leads/{lead_id}/grade", {"grade": "A"}, after_retry=(409,))
        await self.call("leads", f"/v1/leads/{lead_id}/qualify", {}, after_retry=(409,))
        await self.call("leads", f"/v1/leads/{lead_id}/convert",
                        {"account_name": f"Chaos {self.run} {n}", "opportunity": {"amount": "20000.00"}},
                        after_retry=(409,))

        opened = await self.call("opportunities", "/v1/opportunities", {
            "name": f"Chaos deal {self.run} {n}", "account_name": f"Chaos buyer {self.run} {n}",
            "amount": "50000.00", "owner_id": "rep-1",
        })
        opportunity = opened.json()["id"]
        for stage in ("bidding", "negotiation", "contract"):
            await self.call("opportunities", f"/v1/opportunities/{opportunity}/stage", {"stage": stage},
                            after_retry=(409,))
        contract = await self.call("opportunities", "/v1/contracts",
                                   {"opportunity_id": opportunity, "amount": "50000.00"})
        await self.call("opportunities", f"/v1/contracts/{contract.json()['id']}/sign", after_retry=(409,))

    async def flows(self, first: int, count: int) -> None:
        """`count` flows, `concurrency` at a time."""
        numbers = iter(range(first, first + count))

        async def worker() -> None:
            for n in numbers:
                await self.flow(n)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def contend(self, clients: int) -> tuple[int, int]:
        """Many clients on the same lead (touches) and the same opportunity (stage moves with If-Match,
        all based on the same version): every touch lands, exactly one move per version wins.
        Returns (touches made, stage moves accepted)."""
        lead = (await self.call("leads", "/v1/leads", {
            "contact": {"name": "Contended", "email": f"contended-{self.run}@example.com"}, "owner_id": "rep-1",
        })).json()["id"]
        opportunity = (await self.call("opportunities", "/v1/opportunities", {
            "name": f"Contended {self.run}", "account_name": f"Contended {self.run}", "amount": "1000.00",
        })).json()["id"]
        touches = await asyncio.gather(*(
            self.call("leads", f"/v1/leads/{lead}/touches", {"channel": "email", "note": f"client {c}"})
            for c in range(clients)
        ))
        accepted = 0
        for version, stage in enumerate(("bidding", "negotiation", "contract"), start=1):
            moves = await asyncio.gather(*(
                self.call("opportunities", f"/v1/opportunities/{opportunity}/stage", {"stage": stage},
                          ok=(200, 409, 412), headers={"If-Match": f'"{version}"'})
                for _ in range(clients)
            ))
            won = [m for m in moves if m.status_code == 200]
            assert len(won) == 1, f"{len(won)} concurrent moves to {stage} from version {version} succeeded"
            accepted += len(won)
        return len(touches), accepted


# --- poison -------------------------------------------------------------------------------------


async def inject_poison(settings: Settings, per_topic: int, marker: str) -> dict[str, int]:
    """Produce `per_topic` bad messages on every topic, alternately not JSON and a known event type whose
    data fails its schema; each carries `marker`. Returns how many each topic got."""
    producer = kafka.producer(settings)
    await producer.start()
    sent: dict[str, int] = {}
    try:
        for k, topic in enumerate(TOPICS):
            for n in range(per_topic):
                if (k + n) % 2 == 0:
                    value = f"not json {marker} {n}".encode()
                else:
                    value = json.dumps({
                        "specversion": "1.0", "id": f"{marker}-{topic}-{n}", "source": "/chaos",
                        "type": "sales.lead.captured.v1", "subject": marker, "time": "2026-11-23T10:00:00Z",
                        "datacontenttype": "application/json", "data": {"lead_id": 12, "note": marker},
                    }).encode()
                await producer.send_and_wait(topic, value, key=f"{marker}-{n}".encode())
            sent[topic] = per_topic
    finally:
        await producer.stop()
    return sent


async def count_dead_letters(settings: Settings, marker: str) -> int:
    """Messages carrying `marker` on the dead-letter topics."""
    consumer = kafka.consumer(settings, *(t.dead_letters for t in TOPICS.values()), group_id=None)
    await consumer.start()
    found = 0
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            if not batch:
                return found
            found += sum(1 for records in batch.values() for r in records if marker.encode() in (r.value or b""))
    finally:
        await consumer.stop()


def dead_letters_expected(per_topic: dict[str, int]) -> int:
    """Every consuming service dead-letters each bad message of the topics it consumes."""
    return sum(count * len(TOPICS[topic].consumers) for topic, count in per_topic.items())


# --- reconciliation -----------------------------------------------------------------------------


@dataclass
class Reconciliation:
    scenario: str
    events_in: int  # events the services published (outbox rows) in the scenario
    # (consuming service, event) pairs: every event applied by every service that consumes it, and every
    # event of a subscribed type delivered to the webhook receiver
    expected: int
    seen: int  # of those, applied (in the consumer's inbox, committed with the effect) or delivered
    lost: int
    # consumed events that caused the same effect more than once, and events delivered under more than
    # one distinct webhook-id
    applied_twice: int
    recover_s: float | None = None
    lost_by: dict[str, int] = field(default_factory=dict)  # "consumer <- event type" -> events lost
    missing: list[str] = field(default_factory=list)  # a few lost event ids, to look them up
    webhooks_expected: int = 0  # events of the subscribed types
    webhooks_delivered: int = 0  # of those, delivered at least once
    webhook_id_repeats: int = 0  # deliveries of a webhook-id already delivered (at-least-once HTTP: allowed)
    # Deliveries of no published event of a subscribed type: never allowed (a few of their event ids are
    # kept, to look them up). Counted over every delivery the receiver has had, so one fails the rows of
    # the later scenarios as well.
    webhook_strangers: int = 0
    stranger_ids: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.applied_twice == 0 and self.webhook_strangers == 0


@dataclass
class WebhookTally:
    expected: int
    delivered: int
    lost: list[str]  # event ids never delivered
    twice: int  # events delivered under more than one distinct webhook-id
    id_repeats: int
    strangers: list[str]  # (event ids of) deliveries of no published event


def tally_webhooks(deliveries: list[tuple[str, str]], wanted: set[str], published: set[str]) -> WebhookTally:
    """`deliveries`: (webhook-id, event id) as received; `wanted`: the scenario's events of the subscribed
    types; `published`: every such event ever published. A delivery of an event outside `published` is a
    stranger."""
    ids_by_event: dict[str, set[str]] = {}
    for webhook_id, event_id in deliveries:
        ids_by_event.setdefault(event_id, set()).add(webhook_id)
    arrivals = Counter(webhook_id for webhook_id, event_id in deliveries if event_id in wanted)
    return WebhookTally(
        expected=len(wanted),
        delivered=len(wanted & ids_by_event.keys()),
        lost=sorted(wanted - ids_by_event.keys()),
        twice=sum(1 for event_id in wanted if len(ids_by_event.get(event_id, ())) > 1),
        id_repeats=sum(count - 1 for count in arrivals.values()),
        strangers=[event_id for _, event_id in deliveries if event_id not in published],
    )


def consumed_types() -> dict[str, set[str]]:
    """Consuming service -> the event types it applies."""
    return {
        name: set(importlib.import_module(f"{SERVICES[name].module}.main").service.handlers)
        for name in SERVICES
    }


async def reconcile(server_url: str, scenario: str = "", consumed: dict[str, set[str]] | None = None,
                    since: datetime | None = None, webhooks: WebhookReceiver | None = None) -> Reconciliation:
    """Every event in every outbox against every consumer's inbox, and every caused event against its cause.
    `consumed`: consuming service -> the event types it applies (default: as the code says now);
    `since`: only the events published from then on (one scenario's); `webhooks`: a receiver subscribed
    to WEBHOOK_EVENT_TYPES, whose deliveries are reconciled too."""
    conns = {name: await asyncpg.connect(with_database(server_url, SERVICES[name].database)) for name in SERVICES}
    try:
        published: dict[str, list[tuple[str, str]]] = {}  # publisher -> (event id, type)
        events_in = 0
        for name, conn in conns.items():
            rows = await conn.fetch("SELECT id::text AS id, type FROM outbox WHERE created_at >= $1",
                                    since or datetime(1970, 1, 1, tzinfo=UTC))
            published[name] = [(r["id"], r["type"]) for r in rows]
            events_in += len(rows)
        expected = seen = applied_twice = 0
        lost_by: dict[str, int] = {}
        missing: list[str] = []
        for consumer, types in (consumed or consumed_types()).items():
            if not types:
                continue
            inbox = {r["event_id"] for r in await conns[consumer].fetch(
                "SELECT event_id FROM inbox WHERE consumer_group = $1", f"funnelcast-{consumer}")}
            publishers = {TOPICS[event_type(t).topic].publisher for t in types}
            wanted = {i: t for p in publishers for i, t in published[p] if t in types}
            expected += len(wanted)
            seen += len(wanted.keys() & inbox)
            for event_id in wanted.keys() - inbox:
                key = f"{consumer} <- {wanted[event_id]}"
                lost_by[key] = lost_by.get(key, 0) + 1
                if len(missing) < 5:
                    missing.append(event_id)
            # An event applied twice would have published its consequences twice: same cause, type and subject.
            applied_twice += await conns[consumer].fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM outbox WHERE payload->>'causationid' IS NOT NULL"
                " GROUP BY payload->>'causationid', type, aggregateid HAVING count(*) > 1) AS twice"
            )
        # Domain effects that must exist once per cause.
        applied_twice += await conns["opportunities"].fetchval(
            "SELECT count(*) FROM (SELECT lead_id FROM opportunities WHERE lead_id IS NOT NULL"
            " GROUP BY lead_id HAVING count(*) > 1) AS twice"
        )
        applied_twice += await conns["notifications"].fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM notifications GROUP BY cause_id, rule_id, recipient"
            " HAVING count(*) > 1) AS twice"
        )
        result = Reconciliation(scenario, events_in, expected, seen, expected - seen, applied_twice, None, lost_by,
                                missing)
        if webhooks is not None:
            tally = tally_webhooks(
                webhooks.deliveries(),
                {i for rows in published.values() for i, t in rows if t in WEBHOOK_EVENT_TYPES},
                {r["id"] for conn in conns.values() for r in await conn.fetch(
                    "SELECT id::text AS id FROM outbox WHERE type = ANY($1)", list(WEBHOOK_EVENT_TYPES))},
            )
            result.expected += tally.expected
            result.seen += tally.delivered
            result.lost += len(tally.lost)
            result.applied_twice += tally.twice
            if tally.lost:
                result.lost_by["webhook receiver"] = len(tally.lost)
                result.missing += tally.lost[:5]
            result.webhooks_expected, result.webhooks_delivered = tally.expected, tally.delivered
            result.webhook_id_repeats, result.webhook_strangers = tally.id_repeats, len(tally.strangers)
            result.stranger_ids = tally.strangers[:5]
        return result
    finally:
        for conn in conns.values():
            await conn.close()


async def settle(stack: ChaosStack, scenario: str, since: float, timeout: float,
                 started: datetime | None = None) -> Reconciliation:
    """Reconcile the events published from `started` on until nothing is lost (or the timeout);
    `recover_s` counts from `since` (time.monotonic)."""
    assert stack.settings is not None
    server_url = stack.settings.server_url
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await reconcile(server_url, scenario, stack.consumed, started, stack.webhooks)
        except (OSError, asyncpg.PostgresError):
            result = None  # Postgres coming back
        if result is not None and (result.lost == 0 or time.monotonic() > deadline):
            result.recover_s = round(time.monotonic() - since, 1)
            return result
        if result is None and time.monotonic() > deadline:
            raise AssertionError(f"{scenario}: the databases did not answer within {timeout:.0f} s")
        await asyncio.sleep(0.5)


# --- scenarios ----------------------------------------------------------------------------------


Fault = Callable[[], Awaitable[None]]


async def run_scenario(stack: ChaosStack, scenario: str, faults: list[Fault], flows: int, first: int,
                       concurrency: int, settle_timeout: float) -> Reconciliation:
    """Run `flows` flows (numbered from `first`); apply the faults in turn while they run, the k-th of n once
    k/(n+1) of the flows' requests were made; then reconcile the events published meanwhile until nothing
    is missing. `recover_s` counts from the end of the last fault."""
    started = datetime.now(UTC)
    async with Workload(stack, concurrency=concurrency) as workload:
        load = asyncio.create_task(workload.flows(first, flows))
        fault_over = time.monotonic()
        for k, fault in enumerate(faults, start=1):
            target = int(flows * REQUESTS_PER_FLOW * k / (len(faults) + 1))

            async def reached(requests: int = target) -> bool:
                return workload.requests >= requests or load.done()

            await eventually(reached, timeout=3600, interval=0.05)
            await fault()
            fault_over = time.monotonic()
        await load
    return await settle(stack, scenario, fault_over, settle_timeout, started)


@dataclass
class OutageCaptures:
    statuses: Counter[int]  # HTTP status -> captures answered with it (0: no answer)
    slowest_s: float


async def capture_while_broker_unreachable(stack: ChaosStack, seconds: float) -> OutageCaptures:
    """Freeze the broker for `seconds` and capture leads one after another meanwhile, each tried once."""
    statuses: Counter[int] = Counter()
    slowest = 0.0
    async with Workload(stack) as workload:
        stack.freeze_broker()
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                status, took = await workload.capture_once(sum(statuses.values()))
                statuses[status] += 1
                slowest = max(slowest, took)
                await asyncio.sleep(0.05)
        finally:
            stack.thaw_broker()
    return OutageCaptures(statuses, slowest)


def table(rows: list[Reconciliation]) -> str:
    header = ("scenario", "events in", "effects expected", "effects seen", "lost", "applied twice", "recover s",
              "webhooks delivered", "webhook-id repeats")
    lines = [header] + [
        (r.scenario, str(r.events_in), str(r.expected), str(r.seen), str(r.lost), str(r.applied_twice),
         "-" if r.recover_s is None else f"{r.recover_s:.1f}", f"{r.webhooks_delivered}/{r.webhooks_expected}",
         str(r.webhook_id_repeats) + (f" ({r.webhook_strangers} not events)" if r.webhook_strangers else ""))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += [f"  {r.scenario}: lost {r.lost_by}, e.g. {r.missing}" for r in rows if r.lost_by]
    out += [f"  {r.scenario}: webhook deliveries of no published event, e.g. {r.stranger_ids}"
            for r in rows if r.stranger_ids]
    return "\n".join(out)


@contextlib.contextmanager
def chaos_stack(root: Path) -> Iterator[ChaosStack]:
    stack = ChaosStack(root)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
