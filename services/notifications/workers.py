"""The background loops of one instance: due timers, webhook deliveries, e-mails.

The service process runs the timers, and the deliveries too unless `delivery_worker` leaves them to
worker processes (worker.py), which run only the deliveries.

All three read their work from Postgres, so it survives restarts and is shared by instances:
timers are claimed with FOR UPDATE SKIP LOCKED and fired in that transaction; deliveries and
e-mails are leased (their due time pushed past the attempt's timeout) in a short transaction,
sent outside it, and their outcome recorded after, so a slow endpoint never holds a database
transaction open and an instance that dies mid-send leaves the work due again. Webhook deliveries
have a module of their own (deliveries.py).
"""

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from email.message import EmailMessage

import aiosmtplib
import asyncpg

from services.notifications import handlers, metrics, store
from services.notifications.deliveries import Deliveries
from services.notifications.handlers import Context
from services.notifications.targets import TargetGuard
from shared import tracing
from shared.context import Cause, current_cause
from shared.db import Database

log = logging.getLogger(__name__)

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Workers:
    def __init__(self, db: Database, ctx: Context, guard: TargetGuard, webhooks_due: asyncio.Event,
                 ssl_context: ssl.SSLContext | None = None, *, timers: bool = True, deliveries: bool = True
                 ) -> None:
        """`webhooks_due` is set when deliveries are queued (the push hub hears it at commit);
        `ssl_context` verifies https endpoints (default: httpcore's, with certifi's authorities);
        `timers` and `deliveries` say which loops this process runs."""
        self.run_timers = timers
        self.run_deliveries = deliveries
        self._stopping = False
        self.db = db
        self.ctx = ctx
        self.webhooks_due = webhooks_due
        self.deliveries = Deliveries(db, ctx, guard, webhooks_due, ssl_context)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self.run_timers:
            self._tasks.append(asyncio.create_task(self._forever("timers", self.fire_due_timers), name="timers"))
        if self.run_deliveries:
            self._tasks.append(asyncio.create_task(self._forever("webhooks", self.deliveries.step), name="webhooks"))
            if self.ctx.config.smtp_host:
                self._tasks.append(asyncio.create_task(self._forever("e-mail", self.send_due_emails), name="e-mail"))

    async def stop(self, drain_s: float = 0.0) -> None:
        """The webhook loop may end after the step it is in, within `drain_s` (a claim cut short would
        leave its deliveries leased until the lease ends, though no attempt sends them); the timers' is
        cancelled (a step is one transaction), and so is the e-mails' (an e-mail cut short is due again
        when its lease ends, as before). Then the webhook deliveries drain (Deliveries.close) for what is
        left of `drain_s`."""
        drained_by = time.monotonic() + drain_s
        self._stopping = True
        self.webhooks_due.set()  # wakes the webhook loop if it waits for work
        for task in self._tasks:
            if task.get_name() != "webhooks":
                task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=drain_s)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.deliveries.close(max(0.0, drained_by - time.monotonic()))

    async def _forever(self, name: str, step: Callable[[], Awaitable[bool]]) -> None:
        """Run a step again at once while it found work; otherwise wait a poll interval (or a wake-up)."""
        while not self._stopping:
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
                        await asyncio.wait_for(self.webhooks_due.wait(), self.ctx.config.poll_interval_s)
                    self.webhooks_due.clear()
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

    # --- e-mail ---------------------------------------------------------------------------------

    async def send_due_emails(self) -> bool:
        now = self.ctx.clock.now()
        async with self.db.pool.acquire() as conn:
            due = await store.claim_emails(conn, now, now + timedelta(seconds=60), 50)
        for row in due:
            # A client span in the notification's trace, and the cause its log lines carry.
            span = tracing.start_span("smtp send", row["traceparent"], "client",
                                      {"notification.id": str(row["notification_id"])})
            cause = current_cause.set(Cause(correlation_id=row["cause_id"], causation_id=row["cause_id"],
                                            traceparent=span.traceparent))
            try:
                span.end(await self._send_email(row, now))
            finally:
                current_cause.reset(cause)
        return len(due) == 50

    async def _send_email(self, row: asyncpg.Record, now: datetime) -> str | None:
        """Send one e-mail and record the outcome; the error when it failed."""
        config = self.ctx.config
        message = EmailMessage()
        message["From"] = config.smtp_from
        message["To"] = row["to_address"]
        message["Subject"] = row["subject"]
        message["Message-ID"] = f"<{row['notification_id']}@funnelcast>"
        message.set_content(row["body"])
        try:
            await aiosmtplib.send(message, hostname=config.smtp_host, port=config.smtp_port,
                                  start_tls=config.smtp_starttls, timeout=10, username=config.smtp_username,
                                  password=config.smtp_password.get_secret_value() if config.smtp_password
                                  else None)
        except (aiosmtplib.SMTPException, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            attempts = row["attempts"] + 1
            retry_at = None if attempts >= config.smtp_max_attempts else now + timedelta(seconds=30 * 2 ** attempts)
            async with self.db.pool.acquire() as conn:
                await store.email_failed(conn, row["id"], error, retry_at)
            metrics.notifications.labels("email", "failed" if retry_at is None else "retry").inc()
            log.warning("e-mail of notification %s failed (attempt %d): %s; %s", row["notification_id"], attempts,
                        error, "given up" if retry_at is None else f"retrying at {retry_at.isoformat()}")
            return error
        async with self.db.pool.acquire() as conn:
            await store.email_sent(conn, row["id"])
        metrics.notifications.labels("email", "sent").inc()
        return None
