"""Wiring of the notifications service.

Besides the shared runtime (database, relay, the Faust agent feeding `handlers.on_event` from every
topic), each instance runs a push hub (LISTEN on Postgres, see push.py) and the background loops of
workers.py. They start in a router lifespan, inside the service's own, so the database is open.
Tests may set `app.state.notifications_config`, `app.state.clock` and `app.state.resolve_host` (a
resolver for webhook targets, instead of DNS: targets.py) before start-up.
"""

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, FastAPI

from services.notifications import handlers, store
from services.notifications.api import console, inbox, rules
from services.notifications.clock import Clock
from services.notifications.config import NotificationsConfig
from services.notifications.domain import NetworkPolicy, next_digest_at
from services.notifications.push import PushHub
from services.notifications.push import router as stream
from services.notifications.targets import TargetGuard, resolve_with_dns
from services.notifications.webhook_api import webhooks
from services.notifications.workers import Workers
from shared.service import ServiceDefinition


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[None]:
    runtime = app.state.runtime
    ctx = handlers.Context(
        org=app.state.org,
        config=getattr(app.state, "notifications_config", None) or NotificationsConfig(),
        clock=getattr(app.state, "clock", None) or Clock(),
    )
    handlers.configure(ctx)
    app.state.notifications = ctx
    async with runtime.db.transaction() as tx:
        await store.seed_rules(tx.conn, handlers.default_rules())
        await store.ensure_digest_timer(
            tx.conn, next_digest_at(ctx.clock.now(), ctx.config.digest_hour, ctx.config.digest_timezone))
    hub = PushHub(runtime.settings.database_url_for("notifications"), ctx.cache)
    hub.start()
    app.state.push_hub = hub
    guard = TargetGuard(NetworkPolicy.parse(runtime.settings.webhook_allowed_networks),
                        getattr(app.state, "resolve_host", None) or resolve_with_dns)
    app.state.target_guard = guard
    workers = Workers(runtime.db, ctx, guard, hub.webhooks_due)
    workers.start()
    app.state.workers = workers
    try:
        yield
    finally:
        await workers.stop()
        await hub.stop()


lifecycle = APIRouter(lifespan=running)

service = ServiceDefinition(
    name="notifications",
    routers=(lifecycle, rules, inbox, stream, webhooks, console),
    migrations=Path(__file__).parent / "migrations",
    handlers=handlers.HANDLERS,
)
