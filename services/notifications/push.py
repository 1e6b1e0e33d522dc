"""Real-time push: `GET /v1/stream` (WebSocket) and the hub that feeds the sockets of this instance.

How a notification reaches the right socket with several instances: the transaction that stores
notifications also runs `pg_notify('funnelcast_notifications', <a JSON array of them>)` (as few as fit
under Postgres's payload limit: store.push_payloads); Postgres delivers them at commit to every
instance's listening connection, and each instance writes each one to the sockets its recipient
holds there (none, one, or several tabs). No broker round trip, no sticky sessions,
and nothing is announced for a rolled-back transaction. A socket asks for what it missed with
`?since=<notification id or seq>`; the hub resynchronises from the table after its listening
connection was lost, so a gap in NOTIFY delivery costs a query, never a notification.
"""

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from services.notifications import metrics, store
from services.notifications.handlers import WEBHOOKS_DUE_CHANNEL, ConfigCache
from shared.auth import InvalidToken, verify_token
from shared.db import Database

log = logging.getLogger(__name__)

_RESYNC: dict[str, Any] = {"resync": True}
_CLOSED: dict[str, Any] = {"closed": True}


class PushHub:
    """Listens on Postgres for committed notifications and hands them to local sockets."""

    def __init__(self, dsn: str, cache: ConfigCache | None = None, *, push: bool = True) -> None:
        """`push`: listen for notifications to hand to sockets (a delivery worker, with no sockets,
        listens only for queued deliveries and configuration changes)."""
        self.dsn = dsn
        self.push = push
        self.cache = cache or ConfigCache()
        self.webhooks_due = asyncio.Event()
        self._sockets: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="push-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    async def _listen(self) -> None:
        backoff = 0.2
        first = True
        while True:
            try:
                self._lost.clear()
                self._conn = await asyncpg.connect(self.dsn)
                self._conn.add_termination_listener(lambda _: self._lost.set())
                if self.push:
                    await self._conn.add_listener(store.PUSH_CHANNEL, self._on_push)
                await self._conn.add_listener(WEBHOOKS_DUE_CHANNEL, self._on_webhooks_due)
                await self._conn.add_listener(store.CONFIG_CHANNEL, self._on_config_change)
                self.cache.reset(live=True)
                self.listening.set()
                if not first:
                    self._broadcast(_RESYNC)  # what was committed while deaf is read from the table
                first, backoff = False, 0.2
                await self._lost.wait()
                log.warning("the push hub lost its Postgres connection; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("push hub cannot listen yet (%r); retrying in %.1fs", exc, backoff)
            self.listening.clear()
            self.cache.reset(live=False)  # deaf to changes: read rules and subscriptions every time
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _on_push(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        for message in json.loads(str(payload)):  # a list of notifications (store.push_payloads)
            for queue in self._sockets.get(message["recipient"], ()):
                queue.put_nowait(message)

    def _on_config_change(self, *_: object) -> None:
        self.cache.reset(live=True)

    def _on_webhooks_due(self, *_: object) -> None:
        self.webhooks_due.set()

    def _broadcast(self, message: dict[str, Any]) -> None:
        for queues in self._sockets.values():
            for queue in queues:
                queue.put_nowait(message)

    def subscribe(self, user_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._sockets.setdefault(user_id, set()).add(queue)
        metrics.websocket_connections.inc()
        return queue

    def unsubscribe(self, user_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        queues = self._sockets.get(user_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._sockets[user_id]
        metrics.websocket_connections.dec()

    def connected(self, user_id: str) -> int:
        return len(self._sockets.get(user_id, ()))


router = APIRouter(tags=["stream"])


@router.websocket("/v1/stream")
async def stream(
    websocket: WebSocket,
    token: str | None = Query(None, description="the bearer token, for clients that cannot set headers"),
    since: str | None = Query(None, description="the id (or seq) of the last notification seen: "
                                                "what came after it is sent first"),
) -> None:
    """Push the caller's notifications as JSON messages: `id`, `title`, `body`, `created_at`,
    `subject`, `event_type` (and `seq`, `rule_id`, `priority`, `read` ...). The token comes in the
    `Authorization: Bearer` header or `?token=`."""
    app = websocket.app
    header = websocket.headers.get("authorization", "")
    raw = token or (header[7:] if header.lower().startswith("bearer ") else None)
    if not raw:
        await websocket.close(code=1008, reason="a bearer token is required")
        return
    try:
        principal = verify_token(raw, app.state.settings.signing_secret, app.state.org)
    except InvalidToken as exc:
        await websocket.close(code=1008, reason=str(exc)[:120])
        return
    hub: PushHub = app.state.push_hub
    db: Database = app.state.runtime.db
    user_id = principal.user_id
    await websocket.accept()
    queue = hub.subscribe(user_id)  # before reading the backlog, so nothing falls between the two
    try:
        # First a "ready" message, then what was missed after `since` (oldest first), then live ones.
        last_seq = await _cursor(db, user_id, since)
        await websocket.send_json({"type": "ready", "user_id": user_id, "since_seq": last_seq})
        if last_seq is not None:
            last_seq = await _send_missed(websocket, db, user_id, last_seq)
        else:
            async with db.pool.acquire() as conn:
                last_seq = await store.latest_seq(conn, user_id)
        receiver = asyncio.create_task(_drain_client(websocket))
        # the client gone: the loop below hears it through its own queue (no task per message to wait on)
        receiver.add_done_callback(lambda _: queue.put_nowait(_CLOSED))
        try:
            while (message := await queue.get()) is not _CLOSED:
                if message.get("resync") or message.get("ref"):
                    last_seq = await _send_missed(websocket, db, user_id, last_seq)
                elif message["seq"] > last_seq:
                    await _send(websocket, message)
                    last_seq = message["seq"]
        finally:
            receiver.cancel()
    except (WebSocketDisconnect, RuntimeError):
        return  # the client went away mid-send
    finally:
        hub.unsubscribe(user_id, queue)


async def _cursor(db: Database, user_id: str, since: str | None) -> int | None:
    if not since:
        return None
    if since.isdigit():
        return int(since)
    async with db.pool.acquire() as conn:
        try:
            seq = await store.seq_of(conn, user_id, since)
        except ValueError:
            seq = None
    return seq if seq is not None else 0  # an unknown id: send everything kept


async def _send_missed(websocket: WebSocket, db: Database, user_id: str, after_seq: int) -> int:
    while True:
        async with db.pool.acquire() as conn:
            rows = await store.since(conn, user_id, after_seq)
        for row in rows:
            await _send(websocket, store.as_message(row))
            after_seq = row["seq"]
        if len(rows) < 1000:
            return after_seq


async def _send(websocket: WebSocket, message: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps(message, ensure_ascii=False, default=str))
    metrics.notifications.labels("push", "sent").inc()
    cause_time = message.get("cause_time")
    if cause_time:
        caused = datetime.fromisoformat(cause_time)
        metrics.push_latency.observe(max(0.0, (datetime.now(UTC) - caused).total_seconds()))


async def _drain_client(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
