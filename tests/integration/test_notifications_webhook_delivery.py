"""Webhook delivery against a real Postgres and real receivers on loopback (issue 7, issue 10 item 4):
the delivery loop (services/notifications/deliveries.py) as the service runs it, without the broker.

- DNS rebinding: target names resolve through a fake hosts table injected into the resolver (never
  real DNS), only 127.0.0.1/32 is allowed, and a receiver listens on 127.0.0.2 on the same port to
  catch any connection that went to an address that was not checked. Nothing here sends to a
  non-loopback address.
- A subscription deleted while deliveries for it are queued or in flight: no error, nothing else lost.
- The per-subscription rate limit and in-flight share: over the limit waits, none is dropped, and a
  slow endpoint leaves the others' deliveries flowing.
- A service that leaves deliveries to a worker (delivery_worker) sends none; the worker sends each once.
"""

import asyncio
import contextlib
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import trustme
from aiohttp import web
from prometheus_client import REGISTRY

import services.notifications
from services.notifications import metrics, store
from services.notifications.clock import Clock
from services.notifications.config import NotificationsConfig
from services.notifications.domain import NetworkPolicy, new_secret
from services.notifications.handlers import Context
from services.notifications.targets import TargetGuard
from services.notifications.workers import Workers
from shared.db import SHARED_MIGRATIONS, Database, migrate
from shared.org import load_organisation
from tests.support.hosts import Hosts
from tests.support.waiting import eventually, free_port

ORG = load_organisation()
ONLY_127_0_0_1 = NetworkPolicy.parse("127.0.0.1/32")
EVENT_TYPE = "sales.lead.captured.v1"
TIMEOUT = 20.0


@pytest.fixture
async def db(scratch_db: str) -> AsyncIterator[Database]:
    database = await Database.open(scratch_db, "/funnelcast/notifications")
    async with database.pool.acquire() as conn:
        await migrate(conn, SHARED_MIGRATIONS, Path(services.notifications.__file__).parent / "migrations")
    yield database
    await database.close()


@dataclass
class Received:
    path: str
    host_header: str
    webhook_id: str
    at: float


@dataclass
class Receiver:
    """An HTTP(S) endpoint on one loopback address: records every request; paths under /gate/ wait
    until `gate` opens; `concurrent` is the most requests it held at once per path."""

    address: str
    port: int
    received: list[Received] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    holding: dict[str, int] = field(default_factory=dict)
    concurrent: dict[str, int] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.holding[path] = self.holding.get(path, 0) + 1
        self.concurrent[path] = max(self.concurrent.get(path, 0), self.holding[path])
        try:
            if path.startswith("/gate/"):
                await self.gate.wait()
            self.received.append(Received(path, request.headers["Host"], request.headers["webhook-id"],
                                          time.monotonic()))
            return web.Response(status=204)
        finally:
            self.holding[path] -= 1

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


@contextlib.asynccontextmanager
async def serving(address: str, port: int, tls: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(address, port)
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: receiver.server_names.append(name)
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port, ssl_context=tls).start()
    try:
        yield receiver
    finally:
        receiver.gate.set()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def delivering(db: Database, config: NotificationsConfig, guard: TargetGuard,
                     ssl_context: ssl.SSLContext | None = None, *, timers: bool = True, deliveries: bool = True
                     ) -> AsyncIterator[asyncio.Event]:
    """The instance's background loops, as the service (or, `timers` off, a delivery worker) starts them;
    yields the 'deliveries queued' event."""
    due = asyncio.Event()
    workers = Workers(db, Context(ORG, config, Clock()), guard, due, ssl_context, timers=timers, deliveries=deliveries)
    workers.start()
    try:
        yield due
    finally:
        await workers.stop()


async def subscribe(db: Database, url: str) -> uuid.UUID:
    async with db.transaction() as tx:
        row = await store.add_subscription(tx.conn, "svc-erp", url, [EVENT_TYPE], new_secret(b"k" * 32))
    return uuid.UUID(str(row["id"]))


async def queue(db: Database, subscription: uuid.UUID, count: int = 1) -> list[uuid.UUID]:
    queued = []
    async with db.transaction() as tx:
        for _ in range(count):
            event_id = str(uuid.uuid4())
            delivery = await store.add_delivery(tx.conn, subscription, event_id, EVENT_TYPE, datetime.now(UTC),
                                                f'{{"id": "{event_id}"}}')
            assert delivery is not None
            queued.append(delivery)
    return queued


async def statuses(db: Database, subscription: uuid.UUID) -> dict[str, int]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, count(*) FROM webhook_deliveries WHERE subscription_id = $1"
                                " GROUP BY status", subscription)
    return {r["status"]: r["count"] for r in rows}


async def last_errors(db: Database, subscription: uuid.UUID) -> list[str]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch("SELECT last_error FROM webhook_deliveries WHERE subscription_id = $1 AND"
                                " status = 'dead'", subscription)
    return [r["last_error"] for r in rows]


# --- DNS rebinding ----------------------------------------------------------------------------


async def test_deliveries_connect_only_to_the_address_that_passed_the_check(db: Database) -> None:
    port = free_port()
    names = Hosts({"allowed.test": [["127.0.0.1"]], "refused.test": [["127.0.0.2"]],
                   "rebinding.test": [["127.0.0.1"], ["127.0.0.2"]]})
    guard = TargetGuard(ONLY_127_0_0_1, names, remember_s=0)  # nothing remembered: every connection looks up
    config = NotificationsConfig(poll_interval_s=0.05, webhook_max_attempts=1)
    async with serving("127.0.0.1", port) as allowed, serving("127.0.0.2", port) as elsewhere:
        await guard.check_url(f"http://rebinding.test:{port}/hook")  # subscribing saw 127.0.0.1 ...
        ok = await subscribe(db, f"http://allowed.test:{port}/hook")
        rebinding = await subscribe(db, f"http://rebinding.test:{port}/hook")  # ... delivery sees 127.0.0.2
        refused = await subscribe(db, f"http://refused.test:{port}/hook")
        literal = await subscribe(db, f"http://127.0.0.2:{port}/hook")
        ipv6 = await subscribe(db, f"http://[::1]:{port}/hook")
        for subscription in (ok, rebinding, refused, literal, ipv6):
            await queue(db, subscription)
        async with delivering(db, config, guard):
            async def settled() -> bool:
                states = [await statuses(db, s) for s in (ok, rebinding, refused, literal, ipv6)]
                return all("pending" not in s for s in states)

            await eventually(settled, timeout=TIMEOUT)
    assert await statuses(db, ok) == {"succeeded": 1}
    [hook] = allowed.received
    assert hook.host_header == f"allowed.test:{port}"  # the address is pinned, the name is still the name
    assert elsewhere.received == []  # nothing ever connected to 127.0.0.2
    assert [len(allowed.received), len(elsewhere.received)] == [1, 0]
    for subscription, address, kind in ((rebinding, "127.0.0.2", "loopback"), (refused, "127.0.0.2", "loopback"),
                                        (literal, "127.0.0.2", "loopback"), (ipv6, "::1", "loopback")):
        [error] = await last_errors(db, subscription)
        assert f"{address}, a {kind} address" in error, error


async def test_https_delivery_pins_the_address_and_verifies_the_urls_name(db: Database, tmp_path: Path) -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("hooks.test").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    authority.configure_trust(client_tls)
    port = free_port()
    names = Hosts({"hooks.test": [["127.0.0.1"]], "impostor.test": [["127.0.0.1"]]})
    guard = TargetGuard(ONLY_127_0_0_1, names)
    config = NotificationsConfig(poll_interval_s=0.05, webhook_max_attempts=1)
    async with serving("127.0.0.1", port, tls=server_tls) as receiver:
        genuine = await subscribe(db, f"https://hooks.test:{port}/hook")
        impostor = await subscribe(db, f"https://impostor.test:{port}/hook")  # same address, not its certificate
        await queue(db, genuine)
        await queue(db, impostor)
        async with delivering(db, config, guard, ssl_context=client_tls):
            async def settled() -> bool:
                return "pending" not in await statuses(db, genuine) and "pending" not in await statuses(db, impostor)

            await eventually(settled, timeout=TIMEOUT)
    assert await statuses(db, genuine) == {"succeeded": 1}
    [hook] = receiver.received
    assert hook.host_header == f"hooks.test:{port}"
    assert "hooks.test" in receiver.server_names  # SNI carried the URL's name, not the address
    [error] = await last_errors(db, impostor)
    assert "certificate" in error.lower() and "impostor.test" in error, error


# --- a subscription deleted while its deliveries are queued ----------------------------------


async def waiting_on_a_lock(conn: asyncpg.Connection, pid: int) -> bool:
    return bool(await conn.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid))


async def test_queueing_for_a_subscription_being_deleted_skips_it_and_keeps_the_others(db: Database) -> None:
    doomed, kept = await subscribe(db, "http://127.0.0.1:9/a"), await subscribe(db, "http://127.0.0.1:9/b")
    async with db.pool.acquire() as deleting, db.pool.acquire() as consuming, db.pool.acquire() as watching:
        # the deletion first, not committed yet; the consumer queues the event for both meanwhile
        deletion = deleting.transaction()
        await deletion.start()
        await store.delete_subscription(deleting, str(doomed))
        consumption = consuming.transaction()
        await consumption.start()
        queued = asyncio.create_task(store.add_deliveries(consuming, [doomed, kept], "event-1", EVENT_TYPE,
                                                          datetime.now(UTC), "{}"))
        await eventually(lambda: waiting_on_a_lock(watching, consuming.get_server_pid()), timeout=TIMEOUT)
        await deletion.commit()
        assert await queued == 1  # the deleted one is skipped, not a foreign-key violation failing the batch
        await consumption.commit()

        # the other way round: the consumer queues first; the deletion waits, then takes the delivery along
        again = await subscribe(db, "http://127.0.0.1:9/c")
        consumption = consuming.transaction()
        await consumption.start()
        assert await store.add_deliveries(consuming, [again, kept], "event-2", EVENT_TYPE,
                                          datetime.now(UTC), "{}") == 2
        deletion = deleting.transaction()
        await deletion.start()
        deleted = asyncio.create_task(store.delete_subscription(deleting, str(again)))
        await eventually(lambda: waiting_on_a_lock(watching, deleting.get_server_pid()), timeout=TIMEOUT)
        await consumption.commit()
        await deleted
        await deletion.commit()
    assert await statuses(db, doomed) == {} and await statuses(db, again) == {}
    assert await statuses(db, kept) == {"pending": 2}


async def test_a_subscription_deleted_while_its_delivery_is_in_flight_loses_nothing_else(db: Database) -> None:
    port = free_port()
    guard = TargetGuard(ONLY_127_0_0_1)
    config = NotificationsConfig(poll_interval_s=0.05, webhook_timeout_s=TIMEOUT, webhook_max_attempts=1)
    async with serving("127.0.0.1", port) as receiver:
        deleted = await subscribe(db, f"http://127.0.0.1:{port}/gate/deleted")
        kept = await subscribe(db, f"http://127.0.0.1:{port}/gate/kept")
        await queue(db, deleted, 2)
        await queue(db, kept, 2)
        async with delivering(db, config, guard):
            async def all_in_flight() -> bool:
                return sum(receiver.holding.values()) == 4

            await eventually(all_in_flight, timeout=TIMEOUT)
            async with db.transaction() as tx:
                await store.delete_subscription(tx.conn, str(deleted))
            receiver.gate.set()

            async def recorded() -> bool:
                return await statuses(db, kept) == {"succeeded": 2}

            await eventually(recorded, timeout=TIMEOUT)
    assert await statuses(db, deleted) == {}
    assert len(receiver.on("/gate/kept")) == 2


# --- per-subscription rate limit and in-flight share -------------------------------------------


async def test_deliveries_over_an_endpoints_rate_wait_and_do_not_hold_up_others(db: Database) -> None:
    port = free_port()
    config = NotificationsConfig(poll_interval_s=0.05, webhook_rate_per_s=10)
    async with serving("127.0.0.1", port) as receiver:
        busy = await subscribe(db, f"http://127.0.0.1:{port}/busy")
        quiet = await subscribe(db, f"http://127.0.0.1:{port}/quiet")
        await queue(db, busy, 25)
        await queue(db, quiet, 5)  # due after every one of busy's
        async with delivering(db, config, TargetGuard(ONLY_127_0_0_1)):
            async def done() -> bool:
                return await statuses(db, busy) == {"succeeded": 25} and await statuses(db, quiet) == {"succeeded": 5}

            await eventually(done, timeout=TIMEOUT)
    busy_times = [r.at for r in receiver.on("/busy")]
    quiet_times = [r.at for r in receiver.on("/quiet")]
    assert len({r.webhook_id for r in receiver.on("/busy")}) == 25 == len(busy_times)  # none dropped, none twice
    # a burst of 10, then 10/s: the last 15 take at least 1.5 s (a little slack for timer granularity)
    assert busy_times[-1] - busy_times[0] >= 1.3, busy_times[-1] - busy_times[0]
    assert all(later - earlier >= 0.9 for earlier, later in zip(busy_times, busy_times[20:], strict=False))
    # the quiet endpoint's deliveries were not queued behind the busy one's backlog
    assert max(quiet_times) < busy_times[15]


async def test_a_slow_endpoint_holds_only_its_share_of_the_attempts_in_flight(db: Database) -> None:
    port = free_port()
    config = NotificationsConfig(poll_interval_s=0.05, webhook_timeout_s=TIMEOUT, webhook_concurrency=6,
                                 webhook_concurrency_per_subscription=2)
    async with serving("127.0.0.1", port) as receiver:
        slow = await subscribe(db, f"http://127.0.0.1:{port}/gate/slow")
        fast = await subscribe(db, f"http://127.0.0.1:{port}/fast")
        await queue(db, slow, 8)
        await queue(db, fast, 6)
        async with delivering(db, config, TargetGuard(ONLY_127_0_0_1)):
            async def fast_done() -> bool:
                return await statuses(db, fast) == {"succeeded": 6}

            await eventually(fast_done, timeout=TIMEOUT)  # while the slow endpoint has answered nothing
            assert receiver.on("/gate/slow") == [] and receiver.holding["/gate/slow"] == 2
            receiver.gate.set()

            async def slow_done() -> bool:
                return await statuses(db, slow) == {"succeeded": 8}

            await eventually(slow_done, timeout=TIMEOUT)
    assert receiver.concurrent["/gate/slow"] == 2 and receiver.concurrent["/fast"] <= 2


# --- deliveries in a worker process -----------------------------------------------------------


async def untouched(db: Database, subscription: uuid.UUID) -> int:
    """Deliveries never attempted nor leased (a claim pushes the due time past now)."""
    async with db.pool.acquire() as conn:
        return int(await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE subscription_id = $1 AND status = 'pending'"
            " AND attempts = 0 AND next_attempt_at <= now()", subscription))


async def test_a_service_leaving_deliveries_to_a_worker_sends_none_and_the_worker_sends_each_once(
        db: Database) -> None:
    port = free_port()
    config = NotificationsConfig(poll_interval_s=0.05, delivery_worker=True)
    guard = TargetGuard(ONLY_127_0_0_1)
    async with serving("127.0.0.1", port) as receiver:
        subscription = await subscribe(db, f"http://127.0.0.1:{port}/hook")
        await queue(db, subscription, 5)
        async with delivering(db, config, guard, deliveries=not config.delivery_worker) as due:
            due.set()  # as the NOTIFY of queued deliveries would: a delivery loop, had it started, would claim
            for _ in range(2):  # two passes of the service's timers loop (each sets the gauge), a poll apart
                metrics.timers_due.set(-1)

                async def timers_passed() -> bool:
                    return REGISTRY.get_sample_value("funnelcast_timers_due") != -1

                await eventually(timers_passed)
            assert await untouched(db, subscription) == 5 and receiver.received == []
            async with delivering(db, config, guard, timers=False):
                async def delivered() -> bool:
                    return await statuses(db, subscription) == {"succeeded": 5}

                await eventually(delivered, timeout=TIMEOUT)
    assert len(receiver.received) == len({r.webhook_id for r in receiver.received}) == 5
