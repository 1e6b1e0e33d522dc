"""SIGTERM mid-flow, on every process: it stops accepting, finishes what is in flight and exits within its
grace period (FUNNELCAST_SHUTDOWN_GRACE_S), and nothing is lost or done twice.

- leads and opportunities, while clients write over HTTP: every write answered is stored and its events
  are published (the relay flushed the outbox before the exit).
- forecasting and notifications, while they consume a backlog: the offsets committed at the exit are
  exactly the events applied (in the inbox, with their effects), the outbox is flushed, and after a
  restart every event of the backlog has been applied once, its effects counted against what was sent.
- the notifications delivery worker, while webhook deliveries are in flight to a slow receiver on
  127.0.0.1: every delivery the receiver got by the exit is recorded as succeeded, none is left leased,
  and after a restart every event was delivered under exactly one webhook-id, each id once.
- the grace period as one budget: notifications with a 1 s grace period, a request whose body never
  ends, webhook attempts slower than the grace period and a consumer backlog: it exits within the grace
  period and a little, every stage after the HTTP drain cut short, and after a restart nothing is lost.

Real processes (as `funnelcast up` starts them), Postgres and broker of the module's own."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shared import kafka
from shared.auth import issue_token
from shared.broker_watch import BrokerWatch
from shared.events.envelope import CloudEvent
from shared.org import Role
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import Settings
from shared.topology import TOPICS
from tests.conftest import own_servers, settings_for
from tests.support import events
from tests.support.chaos import WebhookReceiver, tally_webhooks
from tests.support.processes import ServiceProcess
from tests.support.published import send_events
from tests.support.waiting import eventually

GRACE_S = 10


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres, TansuBroker]]:
    """The consumers' groups read their topics from the start: only this module's events are there."""
    yield from own_servers(tmp_path_factory, "shutdown")


@pytest.fixture(scope="module")
async def settings(servers: tuple[EmbeddedPostgres, TansuBroker], tmp_path_factory: pytest.TempPathFactory
                   ) -> Settings:
    configured = settings_for(*servers, tmp_path_factory.mktemp("shutdown-home"))
    await kafka.ensure_topics(configured)
    return configured


@pytest.fixture
def spawn(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Starts service processes on the module's servers; kills whatever is left at the end."""
    started: list[ServiceProcess] = []

    def start(name: str, grace_s: float = GRACE_S, **env: str) -> ServiceProcess:
        process = ServiceProcess(name, settings.server_url, settings.kafka_bootstrap_servers, tmp_path, grace_s, env)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def bearer(settings: Settings, user: str, role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(user, role, settings.signing_secret, 600)}"}


async def scalar(settings: Settings, service: str, query: str, *args: Any) -> int:
    conn = await asyncpg.connect(settings.database_url_for(service))
    try:
        return int(await conn.fetchval(query, *args))
    finally:
        await conn.close()


# --- HTTP writes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Writes:
    path: str
    body: Callable[[], dict[str, Any]]
    table: str  # where each answered write is stored, under the id it answered
    event_type: str  # what each write publishes


WRITES = {
    "leads": Writes(
        "/v1/leads",
        lambda: {"contact": {"name": "停机", "email": f"stop.{uuid.uuid4().hex[:12]}@ex.cn"}, "source": "api"},
        "leads", "sales.lead.captured.v1"),
    "opportunities": Writes(
        "/v1/opportunities", lambda: {"name": "停机项目", "account_name": f"停机 {uuid.uuid4().hex[:12]}",
                                      "amount": "50000.00", "owner_id": "rep-1"},
        "opportunities", "sales.opportunity.created.v1"),
}


@pytest.mark.parametrize("service", sorted(WRITES))
async def test_sigterm_while_clients_write_loses_no_answered_write_and_no_event(
    service: str, spawn: Callable[..., ServiceProcess], settings: Settings
) -> None:
    writes = WRITES[service]
    process = spawn(service)
    await process.ready()
    answered: list[str] = []
    refused = 0
    async with httpx.AsyncClient(base_url=process.url, headers=bearer(settings, "rep-1", Role.REP), timeout=30) as http:
        async def write_until_refused() -> None:
            nonlocal refused
            while True:
                try:
                    answer = await http.post(writes.path, json=writes.body())
                except httpx.TransportError:
                    refused += 1
                    return
                if answer.status_code != 201:  # only 503 while draining would be acceptable
                    assert answer.status_code == 503, answer.text
                    return
                answered.append(answer.json()["id"])

        clients = [asyncio.create_task(write_until_refused()) for _ in range(6)]
        await eventually(lambda: at_least(answered, 60), timeout=60)
        stopping = asyncio.create_task(process.terminate())
        await asyncio.wait_for(asyncio.gather(*clients), timeout=GRACE_S + 20)
        code, stopped_in = await stopping
    assert process.stopped_cleanly(code), process.log()[-3000:]
    assert stopped_in < GRACE_S

    stored = await scalar(settings, service, f"SELECT count(*) FROM {writes.table} WHERE id = ANY($1)", answered)  # noqa: S608 - a table name of the test's
    published = await scalar(settings, service, "SELECT count(*) FROM outbox WHERE aggregateid = ANY($1) AND type = $2"
                             " AND published_at IS NOT NULL", answered, writes.event_type)
    unpublished = await scalar(settings, service, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
    assert stored == published == len(answered) >= 60
    assert unpublished == 0  # the relay flushed everything committed before the process exited
    print(f"\n{service}: SIGTERM after {len(answered)} answered writes: exited in {stopped_in:.1f} s, "  # noqa: T201
          f"{refused} clients refused afterwards, every answered write stored, nothing unpublished")


async def at_least(items: list[Any], count: int) -> bool:
    return len(items) >= count


# --- consumer backlogs --------------------------------------------------------------------------


def opportunity_event(type_: str, data: Callable[[str, int], dict[str, object]]) -> Callable[[int], CloudEvent]:
    def event(n: int) -> CloudEvent:
        opportunity = f"opp-{uuid.uuid4().hex[:12]}"
        return CloudEvent(type=type_, source="/funnelcast/opportunities", subject=opportunity,
                          data=data(opportunity, n), sequence=1)

    return event


@dataclass(frozen=True)
class Backlog:
    event: Callable[[int], CloudEvent]  # the n-th event of the backlog
    effects: str  # counts the effects of the events whose ids are $1
    effects_per_event: int
    # Several times what the consumer applies while the signal is on its way, which grows with its pace
    # (measured at exit: forecasting 2,000-3,300 events, notifications 1,300-1,600)
    size: int


BACKLOGS = {
    "forecasting": Backlog(opportunity_event("sales.opportunity.created.v1", events.opportunity_created),
                           "SELECT count(*) FROM deal_transitions WHERE event_id = ANY($1)", 1, 10_000),
    # a notification to the deal's owner (rep-1) and one to the owner's manager (mgr-1)
    "notifications": Backlog(opportunity_event("sales.opportunity.stage_changed.v1", events.stage_changed),
                             "SELECT count(*) FROM notifications WHERE cause_id = ANY($1)", 2, 5_000),
}
UNDER_WAY = 300  # events applied before the signal


async def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of the topic (-1: none)."""
    watch = BrokerWatch(settings.kafka_bootstrap_servers)
    try:
        return await watch.committed(group, topic, range(TOPICS[topic].partitions))
    finally:
        await watch.close()


@pytest.mark.parametrize("service", sorted(BACKLOGS))
async def test_sigterm_while_consuming_a_backlog_commits_what_was_applied_and_the_rest_follows_once(
    service: str, spawn: Callable[..., ServiceProcess], settings: Settings
) -> None:
    backlog = BACKLOGS[service]
    sent = [backlog.event(n) for n in range(backlog.size)]
    ids = [event.id for event in sent]
    group, topic = f"funnelcast-{service}", sent[0].topic
    process = spawn(service)
    await process.ready()

    async def applied() -> set[str]:
        conn = await asyncpg.connect(settings.database_url_for(service))
        try:
            return {r["event_id"] for r in await conn.fetch(
                "SELECT event_id FROM inbox WHERE consumer_group = $1 AND event_id = ANY($2)", group, ids)}
        finally:
            await conn.close()

    async def under_way() -> bool:
        return len(await applied()) >= UNDER_WAY

    positions = await send_events(settings, sent)
    await eventually(under_way, timeout=60, interval=0.1)
    code, stopped_in = await process.terminate()
    assert process.stopped_cleanly(code), process.log()[-3000:]
    assert stopped_in < GRACE_S
    applied_at_exit = len(applied_ids := await applied())
    assert applied_at_exit < backlog.size, "the backlog was consumed before the signal: the test proved nothing"
    committed = await committed_offsets(settings, group, topic)
    passed = {e.id for e, at in zip(sent, positions, strict=True) if at.offset < committed.get(at.partition, -1)}
    assert passed == applied_ids  # offsets committed past exactly the events applied, no more, no less
    assert await scalar(settings, service, backlog.effects, ids) == backlog.effects_per_event * applied_at_exit
    assert await scalar(settings, service, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0

    process.start()
    await process.ready()

    async def all_applied() -> bool:
        return len(await applied()) == backlog.size

    await eventually(all_applied, timeout=60, interval=0.2)
    assert await scalar(settings, service, backlog.effects, ids) == backlog.effects_per_event * backlog.size
    # an event applied twice would have published its consequences twice: same cause, type and subject
    assert await scalar(settings, service, "SELECT count(*) FROM (SELECT 1 FROM outbox"
                        " WHERE payload->>'causationid' = ANY($1) GROUP BY payload->>'causationid', type, aggregateid"
                        " HAVING count(*) > 1) AS twice", ids) == 0
    print(f"\n{service}: SIGTERM with {applied_at_exit} of {backlog.size} events applied: "  # noqa: T201
          f"exited in {stopped_in:.1f} s, offsets committed for exactly those; "
          f"after the restart all {backlog.size} applied once, {backlog.effects_per_event * backlog.size} effects")


# --- webhook deliveries -------------------------------------------------------------------------

DELIVERIES = 200
ANSWER_DELAY_S = 0.3  # the receiver's: 16 attempts in flight (per subscription) make about 50 deliveries/s


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver(answer_delay_s=ANSWER_DELAY_S)
    started.start()
    yield started
    started.stop()


async def test_sigterm_to_the_delivery_worker_finishes_its_deliveries_in_flight_and_the_rest_follow_once(
    spawn: Callable[..., ServiceProcess], settings: Settings, receiver: WebhookReceiver
) -> None:
    to_loopback = {"FUNNELCAST_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"}
    service = spawn("notifications", FUNNELCAST_NOTIFICATIONS_DELIVERY_WORKER="true", **to_loopback)
    await service.ready()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        subscribed = await http.post("/v1/webhooks", headers=bearer(settings, "admin-1", Role.ADMIN),
                                     json={"url": receiver.url, "event_types": ["sales.opportunity.stage_changed.v1"]})
    assert subscribed.status_code == 201, subscribed.text
    sent = [opportunity_event("sales.opportunity.stage_changed.v1", events.stage_changed)(n) for n in range(DELIVERIES)]
    ids = [event.id for event in sent]
    await send_events(settings, sent)

    async def queued() -> bool:
        return await scalar(settings, "notifications", "SELECT count(*) FROM webhook_deliveries"
                            " WHERE event_id = ANY($1)", ids) == DELIVERIES

    await eventually(queued, timeout=60, interval=0.2)

    worker = spawn("notifications-worker", **to_loopback)
    await worker.ready()

    async def under_way() -> bool:
        return len(receiver.deliveries()) >= DELIVERIES // 5

    await eventually(under_way, timeout=60, interval=0.05)
    received_at_signal = len(receiver.deliveries())
    code, stopped_in = await worker.terminate()
    assert worker.stopped_cleanly(code), worker.log()[-3000:]
    assert stopped_in < GRACE_S
    received_at_exit = len(receiver.deliveries())
    assert received_at_exit < DELIVERIES, "every delivery was made before the signal: the test proved nothing"
    succeeded = await scalar(settings, "notifications", "SELECT count(*) FROM webhook_deliveries"
                             " WHERE event_id = ANY($1) AND status = 'succeeded'", ids)
    conn = await asyncpg.connect(settings.database_url_for("notifications"))
    try:
        # due later though never attempted: only a lease (claimed, not sent or not recorded) does that
        leased = [dict(r) for r in await conn.fetch(
            "SELECT id, next_attempt_at - now() AS due_in FROM webhook_deliveries"
            " WHERE event_id = ANY($1) AND status = 'pending' AND attempts = 0 AND next_attempt_at > now()", ids)]
    finally:
        await conn.close()
    assert succeeded == received_at_exit  # every attempt the receiver got was answered and recorded
    assert leased == []  # nothing waits for a lease of the stopped worker to end

    worker.start()
    await worker.ready()

    async def all_delivered() -> bool:
        return {event_id for _, event_id in receiver.deliveries()} >= set(ids)

    await eventually(all_delivered, timeout=30, interval=0.2)
    tally = tally_webhooks(receiver.deliveries(), set(ids), set(ids))
    assert tally.lost == [] and tally.twice == 0 and tally.strangers == []
    assert tally.id_repeats == 0  # no attempt was cut off after the receiver had it
    print(f"\nnotifications-worker: SIGTERM with {received_at_signal} of {DELIVERIES} webhooks delivered: "  # noqa: T201
          f"exited in {stopped_in:.1f} s, {received_at_exit - received_at_signal} more reached the receiver "
          f"meanwhile, all recorded, none left leased; after the restart all {DELIVERIES} delivered, each under "
          "one webhook-id, once")


# --- one budget for the whole stop --------------------------------------------------------------

SHORT_GRACE_S = 1.0
EXIT_MARGIN_S = 1.0  # closing the producer, the database pool and the process itself, on a loaded machine
SLOW_ANSWER_S = 3.0  # the receiver's, longer than the grace period
WEBHOOKED = 30  # opportunities created, each a webhook delivery, sent before the backlog
BACKLOGGED = 3000  # more than the consumer applies in the grace period


async def body_that_never_ends() -> AsyncIterator[bytes]:
    """A request in flight for as long as the test wants: the server waits for the rest of its body."""
    yield b'{"url": '
    await asyncio.Event().wait()


async def test_a_stop_takes_one_grace_period_however_much_is_in_flight_and_the_cut_stages_lose_nothing(
    spawn: Callable[..., ServiceProcess], settings: Settings, receiver: WebhookReceiver
) -> None:
    """Each stage alone would take longer than the grace period: the HTTP drain (a request whose body never
    ends), the webhook attempts in flight, the consumer's backlog. The drain takes the whole budget, so the
    later stages are cut short at once, and each cut is logged."""
    receiver.answer_delay_s = SLOW_ANSWER_S
    to_loopback = {"FUNNELCAST_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"}
    service = spawn("notifications", grace_s=SHORT_GRACE_S, **to_loopback)
    await service.ready()
    admin = bearer(settings, "admin-1", Role.ADMIN)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        subscribed = await http.post("/v1/webhooks", headers=admin,
                                     json={"url": receiver.url, "event_types": ["sales.opportunity.created.v1"]})
        assert subscribed.status_code == 201, subscribed.text
        unending = asyncio.create_task(http.post("/v1/webhooks", headers=admin, content=body_that_never_ends()))
        webhooked = [opportunity_event("sales.opportunity.created.v1", events.opportunity_created)(n)
                     for n in range(WEBHOOKED)]
        backlog = BACKLOGS["notifications"]
        backlogged = [backlog.event(n) for n in range(BACKLOGGED)]
        ids = [event.id for event in webhooked + backlogged]
        await send_events(settings, webhooked + backlogged)

        async def applied() -> int:
            return await scalar(settings, "notifications", "SELECT count(*) FROM inbox WHERE event_id = ANY($1)", ids)

        async def under_way() -> bool:
            return bool(receiver.deliveries()) and await applied() >= BACKLOGGED // 20  # the consumer is early in it

        await eventually(under_way, timeout=60, interval=0.1)
        # Checked at the signal, not at the exit: on a quiet machine the consumer may well finish the
        # backlog during the HTTP drain's second, which is no loss of the test's point.
        applied_at_signal = await applied()
        code, stopped_in = await service.terminate()
        unending.cancel()
        await asyncio.gather(unending, return_exceptions=True)
    log = service.log()
    assert service.stopped_cleanly(code), log[-3000:]
    assert stopped_in < SHORT_GRACE_S + EXIT_MARGIN_S
    assert applied_at_signal < len(ids), "the backlog was consumed before the signal: the test proved nothing"
    for cut_short in ("timeout graceful shutdown exceeded", "webhook attempts in flight were cut short",
                      "the consumer's stop was cut short", "the outbox relay's flush was cut short"):
        assert cut_short in log, log[-3000:]

    receiver.answer_delay_s = 0
    service.grace_s = GRACE_S
    service.start()
    await service.ready()

    async def all_done() -> bool:
        delivered = {event_id for _, event_id in receiver.deliveries()} >= {event.id for event in webhooked}
        unpublished = await scalar(settings, "notifications", "SELECT count(*) FROM outbox WHERE published_at IS NULL")
        return delivered and unpublished == 0 and await applied() == len(ids)

    await eventually(all_done, timeout=60, interval=0.2)
    backlog_ids = [event.id for event in backlogged]
    effects = await scalar(settings, "notifications", backlog.effects, backlog_ids)
    assert effects == backlog.effects_per_event * BACKLOGGED
    assert await scalar(settings, "notifications", "SELECT count(*) FROM (SELECT 1 FROM outbox"
                        " WHERE payload->>'causationid' = ANY($1) GROUP BY payload->>'causationid', type, aggregateid"
                        " HAVING count(*) > 1) AS twice", ids) == 0
    webhooked_ids = {event.id for event in webhooked}
    tally = tally_webhooks(receiver.deliveries(), webhooked_ids, webhooked_ids)
    assert tally.lost == [] and tally.twice == 0 and tally.strangers == []  # repeats: under the same webhook-id
    print(f"\nnotifications, grace {SHORT_GRACE_S:.0f} s: exited {stopped_in:.1f} s after SIGTERM, every stage after "  # noqa: T201
          f"the HTTP drain cut short; after the restart all {len(ids)} events applied once, every outbox row "
          f"published, all {WEBHOOKED} webhooks delivered ({tally.id_repeats} attempts again under their webhook-id)")
