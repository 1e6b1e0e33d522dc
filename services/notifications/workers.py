"""The background loops of one instance: due timers, webhook deliveries, e-mails.

All three read their work from Postgres, so it survives restarts and is shared by instances:
timers are claimed with FOR UPDATE SKIP LOCKED and fired in that transaction; deliveries and
e-mails are leased (their due time pushed past the attempt's timeout) in a short transaction,
sent outside it, and their outcome recorded after, so a slow endpoint never holds a database
transaction open and an instance that dies mid-send leaves the work due again.
"""

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from email.message import EmailMessage
from urllib.parse import urlsplit

import aiosmtplib
import asyncpg
import httpx

from services.notifications import handlers, metrics, store
from services.notifications.domain import NetworkPolicy, RetrySchedule, sign
from services.notifications.handlers import Context
from services.notifications.push import PushHub
from shared.db import Connection, Database

log = logging.getLogger(__name__)

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
_BATCH = 200


class BlockedAddress(Exception):
    pass


async def check_target(url: str, policy: NetworkPolicy) -> None:
    """Refuse a URL whose host resolves to an address the policy does not permit."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedAddress("the URL must be http(s)://host/...")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BlockedAddress(f"{parts.hostname} does not resolve: {exc}") from None
    for info in infos:
        address = str(info[4][0])
        if not policy.permits(address):
            raise BlockedAddress(
                f"{parts.hostname} resolves to {address}, a private or reserved address"
                " (FUNNELCAST_WEBHOOK_ALLOWED_NETWORKS can allow it)")


class Workers:
    def __init__(self, db: Database, ctx: Context, hub: PushHub, policy: NetworkPolicy) -> None:
        self.db = db
        self.ctx = ctx
        self.hub = hub
        self.policy = policy
        config = ctx.config
        self.schedule = RetrySchedule(config.webhook_retry_base_s, config.webhook_retry_cap_s,
                                      config.webhook_max_attempts)
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        self._checked: dict[str, float] = {}  # host:port -> until when its addresses are known permitted

    def start(self) -> None:
        config = self.ctx.config
        limits = httpx.Limits(max_connections=config.webhook_concurrency,
                              max_keepalive_connections=config.webhook_concurrency)
        self._http = httpx.AsyncClient(timeout=config.webhook_timeout_s, limits=limits, follow_redirects=False)
        self._tasks = [
            asyncio.create_task(self._forever("timers", self.fire_due_timers), name="timers"),
            asyncio.create_task(self._forever("webhooks", self.deliver_due_webhooks), name="webhooks"),
        ]
        if config.smtp_host:
            self._tasks.append(asyncio.create_task(self._forever("e-mail", self.send_due_emails), name="e-mail"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.aclose()

    async def _forever(self, name: str, step: Callable[[], Awaitable[bool]]) -> None:
        """Run a step again at once while it found work; otherwise wait a poll interval (or a wake-up)."""
        while True:
            try:
                busy = await step()
            except _DB_ERRORS as exc:
                log.warning("%s loop: database unavailable (%r)", name, exc)
                busy = False
            except Exception:
                log.exception("%s loop failed; continuing", name)
                busy = False
            if not busy:
                if name == "webhooks":
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.hub.webhooks_due.wait(), self.ctx.config.poll_interval_s)
                    self.hub.webhooks_due.clear()
                else:
                    await asyncio.sleep(self.ctx.config.poll_interval_s)

    # --- timers ---------------------------------------------------------------------------------

    async def fire_due_timers(self) -> bool:
        now = self.ctx.clock.now()
        async with self.db.transaction() as tx:
            timers = await store.claim_due_timers(tx.conn, now, 100)
            for timer in timers:
                await handlers.fire_timer(tx.conn, self.ctx, timer)
        async with self.db.pool.acquire() as conn:
            metrics.timers_due.set(await store.timers_due(conn, now))
        return len(timers) == 100

    # --- webhooks -------------------------------------------------------------------------------

    async def deliver_due_webhooks(self) -> bool:
        now = self.ctx.clock.now()
        lease = now + timedelta(seconds=self.ctx.config.webhook_timeout_s + 30)
        async with self.db.pool.acquire() as conn:
            due = await store.claim_deliveries(conn, now, lease, _BATCH)
        if not due:
            return False
        attempts = await asyncio.gather(*(self._attempt(row) for row in due))
        dead_by_subscription: dict[uuid.UUID, list[bool]] = {}
        for row, attempt in zip(due, attempts, strict=True):
            metrics.webhook_deliveries.labels(attempt.outcome, str(min(attempt.attempt, 10))).inc()
            if attempt.outcome != "retry":
                dead_by_subscription.setdefault(row["subscription_id"], []).append(attempt.outcome == "succeeded")
        async with self.db.transaction() as tx:
            await store.record_attempts(tx.conn, attempts)
            for subscription_id, outcomes in dead_by_subscription.items():
                await self._count_outcomes(tx.conn, subscription_id, outcomes)
        return len(due) == _BATCH

    async def _count_outcomes(self, conn: Connection, subscription_id: uuid.UUID, outcomes: list[bool]) -> None:
        failures = 0
        for succeeded in outcomes:
            failures = await store.count_failure(conn, subscription_id, succeeded)
        if failures >= self.ctx.config.webhook_disable_after:
            subscription = await store.subscription(conn, str(subscription_id))
            if subscription is not None and subscription["enabled"]:
                await handlers.webhook_disabled(conn, self.ctx, subscription, failures)

    async def _check(self, url: str) -> None:
        """The address check, remembered for 30 s per host on success (resolving goes through a thread)."""
        host = urlsplit(url).netloc
        if self._checked.get(host, 0.0) > time.monotonic():
            return
        await check_target(url, self.policy)
        self._checked[host] = time.monotonic() + 30

    async def _attempt(self, row: asyncpg.Record) -> store.Attempt:
        number = row["attempts"] + 1
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            await self._check(row["url"])
            assert self._http is not None
            message_id = f"msg_{row['id'].hex}"
            timestamp = int(time.time())
            body = row["payload"].encode()
            response = await self._http.post(row["url"], content=body, headers={
                "content-type": "application/cloudevents+json",
                "webhook-id": message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(row["secret"], message_id, timestamp, body),
            })
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except BlockedAddress as exc:
            error = str(exc)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        duration_ms = (time.perf_counter() - started) * 1000
        if error is None:
            return store.Attempt(row["id"], number, status_code, None, duration_ms, "succeeded", None)
        delay = self.schedule.delay_after(number)
        if delay is None:
            return store.Attempt(row["id"], number, status_code, error, duration_ms, "dead", None)
        return store.Attempt(row["id"], number, status_code, error, duration_ms, "retry",
                             self.ctx.clock.now() + delay)

    # --- e-mail ---------------------------------------------------------------------------------

    async def send_due_emails(self) -> bool:
        config = self.ctx.config
        now = self.ctx.clock.now()
        async with self.db.pool.acquire() as conn:
            due = await store.claim_emails(conn, now, now + timedelta(seconds=60), 50)
        for row in due:
            message = EmailMessage()
            message["From"] = config.smtp_from
            message["To"] = row["to_address"]
            message["Subject"] = row["subject"]
            message["Message-ID"] = f"<{row['notification_id']}@funnelcast>"
            message.set_content(row["body"])
            try:
                await aiosmtplib.send(message, hostname=config.smtp_host, port=config.smtp_port,
                                      start_tls=config.smtp_starttls, timeout=10)
            except (aiosmtplib.SMTPException, OSError) as exc:
                attempts = row["attempts"] + 1
                retry_at = None if attempts >= config.smtp_max_attempts else now + timedelta(seconds=30 * 2 ** attempts)
                async with self.db.pool.acquire() as conn:
                    await store.email_failed(conn, row["id"], f"{type(exc).__name__}: {exc}", retry_at)
                metrics.notifications.labels("email", "failed" if retry_at is None else "retry").inc()
                continue
            async with self.db.pool.acquire() as conn:
                await store.email_sent(conn, row["id"])
            metrics.notifications.labels("email", "sent").inc()
        return len(due) == 50
