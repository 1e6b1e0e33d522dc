"""The webhook delivery loop of one instance: claim due deliveries fairly, send them, record the outcomes.

- Claims are per subscription: each gets at most its allowance, i.e. what its token bucket
  (`webhook_rate_per_s`) and its share of the attempts in flight (`webhook_concurrency_per_subscription`)
  allow now. A backlog, a limit or a slow endpoint of one subscriber leaves the others' deliveries
  flowing; what is over the limit stays due in the table and is claimed later, never dropped.
- Attempts run as tasks and do not wait for one another: the loop claims again as slots free up,
  and records whatever has finished in one transaction per pass. A finished attempt wakes the loop
  `_RECORD_WINDOW_S` later, not at once, so the attempts that finish meanwhile share that pass (its
  transaction and its claim) instead of costing a pass each. A delivery is leased
  (its due time pushed past the attempt's deadline) while in flight, so another instance does not
  send it too, and one whose instance died is due again when the lease ends.
- Sending goes through httpcore connections opened by `CheckedBackend` (targets.py): every connection
  goes to an address that passed the address policy when it was resolved, never to a second DNS
  answer. They are kept alive per origin by `connections.Connections` (not httpcore's pool, whose
  bookkeeping cost more CPU than the rest of an attempt).
- Each attempt continues the trace of the event it delivers: a client span (exported when tracing is on,
  shared/tracing.py) whose W3C `traceparent` header goes with the POST, and whose trace id the attempt's
  log lines carry.
The buckets are per instance: with N instances an endpoint may get up to N times the rate.
"""

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import time
import uuid
from collections import Counter
from datetime import timedelta

import asyncpg
import httpcore
import httpx

from services.notifications import handlers, metrics, store
from services.notifications.connections import Connections
from services.notifications.domain import RetrySchedule, TokenBucket, sign
from services.notifications.handlers import Context
from services.notifications.targets import BlockedAddress, CheckedBackend, TargetGuard
from shared import tracing
from shared.context import Cause, current_cause
from shared.db import Connection, Database

log = logging.getLogger(__name__)

_KEEPALIVE_S = 5.0  # an idle connection is closed after this (httpx's default): the next one looks up again
_RECORD_WINDOW_S = 0.02  # a finished attempt is recorded (its slot refilled) at most this late, with others
_ANSWER_READ_LIMIT = 64 * 1024  # of a receiver's answer body, read (and discarded) to keep the connection
_SEND_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.UnsupportedProtocol, httpx.InvalidURL)


class Deliveries:
    def __init__(self, db: Database, ctx: Context, guard: TargetGuard, wake: asyncio.Event,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.db = db
        self.ctx = ctx
        self.wake = wake  # set when deliveries are queued (NOTIFY) or an attempt finishes
        config = ctx.config
        self.schedule = RetrySchedule(config.webhook_retry_base_s, config.webhook_retry_cap_s,
                                      config.webhook_max_attempts)
        self._connections = Connections(CheckedBackend(guard), ssl_context, _KEEPALIVE_S, config.webhook_concurrency)
        self._buckets: dict[uuid.UUID, TokenBucket] = {}
        self._in_flight: Counter[uuid.UUID] = Counter()
        self._sending: dict[asyncio.Task[None], uuid.UUID] = {}  # attempt -> the delivery it sends
        self._finished: list[tuple[uuid.UUID, store.Attempt]] = []  # (subscription, attempt) not yet recorded
        self._wake_after_window: asyncio.TimerHandle | None = None

    async def step(self) -> bool:
        """Record what finished, then claim and start what may be sent now. True when there may be more
        due at once (every free slot was filled)."""
        await self.record_finished()
        return await self._claim_and_send()

    async def close(self, drain_s: float = 0.0) -> None:
        """Stop: the attempts in flight may finish for `drain_s` seconds (each ends by its own timeout
        anyway); those still running then are cut short and their leases released, so they are due again
        at once, for another instance or this one restarted (under the same webhook-id). Record what
        finished, close the connections."""
        if self._sending:
            await asyncio.wait(self._sending, timeout=drain_s)
        cut_short = list(self._sending.values())
        for task in self._sending:
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        if self._wake_after_window is not None:
            self._wake_after_window.cancel()
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self.record_finished()
            if cut_short:
                async with self.db.pool.acquire() as conn:
                    await store.release_deliveries(conn, cut_short, self.ctx.clock.now())
                log.warning("stopping: %d webhook attempts in flight were cut short; their deliveries are due"
                            " again now, under the same webhook-id", len(cut_short))
        await self._connections.aclose()

    async def _claim_and_send(self) -> bool:
        config = self.ctx.config
        slots = config.webhook_concurrency - len(self._sending)
        if slots <= 0:
            return False  # an attempt finishing sets `wake`
        now = time.monotonic()
        for subscription_id in [s for s, b in self._buckets.items() if not self._in_flight[s]
                                and b.available(now) >= b.burst]:
            del self._buckets[subscription_id]  # idle and full: the same as a new bucket
        per_subscription = config.webhook_concurrency_per_subscription
        allowances = {s: max(0, min(b.available(now), per_subscription - self._in_flight[s]))
                      for s, b in self._buckets.items()}
        fresh = min(TokenBucket.full(config.webhook_rate_per_s, now).available(now), per_subscription)
        claimed_at = self.ctx.clock.now()
        lease = claimed_at + timedelta(seconds=config.webhook_timeout_s + 30)
        async with self.db.pool.acquire() as conn:
            due = await store.claim_deliveries(conn, claimed_at, lease, slots, allowances, fresh)
        for row in due:
            subscription_id = row["subscription_id"]
            bucket = self._buckets.setdefault(subscription_id, TokenBucket.full(config.webhook_rate_per_s, now))
            bucket.take(1, now)
            self._in_flight[subscription_id] += 1
            task = asyncio.create_task(self._send(row), name=f"webhook {row['id']}")
            self._sending[task] = row["id"]
            task.add_done_callback(self._sending.pop)
        return len(due) == slots

    async def _send(self, row: asyncpg.Record) -> None:
        subscription_id = row["subscription_id"]
        try:
            span = _attempt_span(row)
            attempt = await self._attempt(row, span.traceparent)
            self._finished.append((subscription_id, attempt))  # the list as it is now: recording swaps it
            answered = {} if attempt.status_code is None else {"http.response.status_code": attempt.status_code}
            span.end(attempt.error, attributes={"webhook.attempt": attempt.attempt, **answered})
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly; due again when its lease ends", row["id"])
        finally:
            self._in_flight[subscription_id] -= 1
            if not self._in_flight[subscription_id]:
                del self._in_flight[subscription_id]
            if self._wake_after_window is None:
                self._wake_after_window = asyncio.get_running_loop().call_later(_RECORD_WINDOW_S, self._wake)

    def _wake(self) -> None:
        self._wake_after_window = None
        self.wake.set()

    async def _attempt(self, row: asyncpg.Record, traceparent: str) -> store.Attempt:
        config = self.ctx.config
        number = row["attempts"] + 1
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(config.webhook_timeout_s):
                status_code = await self._post(row, traceparent)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except BlockedAddress as exc:
            error = str(exc)
        except TimeoutError:
            error = f"no answer within {config.webhook_timeout_s} s"
        except _SEND_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        duration_ms = (time.perf_counter() - started) * 1000
        if error is None:
            return store.Attempt(row["id"], number, status_code, None, duration_ms, "succeeded", None)
        delay = self.schedule.delay_after(number)
        if delay is None:
            log.warning("webhook delivery %s failed on its last attempt (%d): %s", row["id"], number, error)
            return store.Attempt(row["id"], number, status_code, error, duration_ms, "dead", None)
        log.info("webhook delivery %s attempt %d failed: %s; retrying in %.1f s", row["id"], number, error,
                 delay.total_seconds())
        return store.Attempt(row["id"], number, status_code, error, duration_ms, "retry", self.ctx.clock.now() + delay)

    async def _post(self, row: asyncpg.Record, traceparent: str) -> int:
        """POST the signed CloudEvent, in the trace of `traceparent`; the answer's status code."""
        url = httpx.URL(row["url"])  # httpx's parser: IPv6 literals, IDNA hosts, userinfo
        message_id = f"msg_{row['id'].hex}"
        timestamp = int(time.time())
        body = row["payload"].encode()
        headers = [
            (b"Host", url.netloc),
            (b"Content-Type", b"application/cloudevents+json"),
            (b"Content-Length", str(len(body)).encode()),
            (b"webhook-id", message_id.encode()),
            (b"webhook-timestamp", str(timestamp).encode()),
            (b"webhook-signature", sign(row["secret"], message_id, timestamp, body).encode()),
            (b"traceparent", traceparent.encode()),
        ]
        if url.username or url.password:
            credentials = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
            headers.append((b"Authorization", f"Basic {credentials}".encode()))
        target = httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)
        timeout = self.ctx.config.webhook_timeout_s
        request = httpcore.Request("POST", target, headers=headers, content=body, extensions={
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}})
        return await self._connections.request(request, _ANSWER_READ_LIMIT)

    async def record_finished(self) -> None:
        """Record every finished attempt in one transaction; on failure they are kept for the next try
        (their leases give that time)."""
        if not self._finished:
            return
        finished, self._finished = self._finished, []
        try:
            async with self.db.transaction() as tx:
                await store.record_attempts(tx.conn, [attempt for _, attempt in finished])
                outcomes: dict[uuid.UUID, list[bool]] = {}
                for subscription_id, attempt in finished:
                    if attempt.outcome != "retry":
                        outcomes.setdefault(subscription_id, []).append(attempt.outcome == "succeeded")
                if outcomes:
                    await self._count_outcomes(tx.conn, outcomes)
        except BaseException:
            self._finished[:0] = finished
            raise
        for _, attempt in finished:
            metrics.webhook_deliveries.labels(attempt.outcome, str(min(attempt.attempt, 10))).inc()

    async def _count_outcomes(self, conn: Connection, outcomes: dict[uuid.UUID, list[bool]]) -> None:
        for subscription_id, failures in (await store.count_outcomes(conn, outcomes)).items():
            if failures >= self.ctx.config.webhook_disable_after:
                subscription = await store.subscription(conn, str(subscription_id))
                if subscription is not None and subscription["enabled"]:
                    await handlers.webhook_disabled(conn, self.ctx, subscription, failures)


def _attempt_span(row: asyncpg.Record) -> tracing.Span:
    """A delivery attempt: a client span in the trace of the event it delivers (a new trace when the event
    has none), set as this attempt's cause, so its log lines carry the trace id. Each attempt runs as a
    task of its own, with a copy of the context: setting the cause here touches no other attempt."""
    event = json.loads(row["payload"])
    span = tracing.start_span("webhook POST", event.get("traceparent"), "client",
                              {"webhook.delivery_id": str(row["id"]), "cloudevents.event_id": event["id"]})
    current_cause.set(Cause(correlation_id=event.get("correlationid") or event["id"], causation_id=event["id"],
                            traceparent=span.traceparent))
    return span
