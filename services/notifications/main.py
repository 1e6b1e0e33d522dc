"""Wiring of the notifications service.

Besides the shared runtime (database, relay, the Faust agent feeding `handlers.on_event` from every
topic), each instance runs a push hub (LISTEN on Postgres, see push.py) and the background loops of
workers.py (the deliveries' only when `delivery_worker` is off: else worker.py's processes run them).
They start in a router lifespan, inside the service's own, so the database is open.
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


def configure(app: FastAPI) -> handlers.Context:
    """This process's handlers' context and webhook target guard, from the app's state."""
    ctx = handlers.Context(
        org=app.state.org,
        config=getattr(app.state, "notifications_config", None) or NotificationsConfig(),
        clock=getattr(app.state, "clock", None) or Clock(),
    )
    handlers.configure(ctx)
    app.state.notifications = ctx
    app.state.target_guard = TargetGuard(NetworkPolicy.parse(app.state.runtime.settings.webhook_allowed_networks),
                                         getattr(app.state, "resolve_host", None) or resolve_with_dns)
    return ctx


@contextlib.asynccontextmanager
async def background(app: FastAPI, ctx: handlers.Context, *, push: bool, timers: bool, deliveries: bool
                     ) -> AsyncIterator[None]:
    """A push hub (listening for notifications to push too when `push`) and the loops of workers.py
    this process is to run, from start-up to shutdown."""
    runtime = app.state.runtime
    hub = PushHub(runtime.settings.database_url_for("notifications"), ctx.cache, push=push)
    hub.start()
    app.state.push_hub = hub
    workers = Workers(runtime.db, ctx, app.state.target_guard, hub.webhooks_due, timers=timers, deliveries=deliveries)
    workers.start()
    app.state.workers = workers
    try:
        yield
    finally:
        # The webhook attempts in flight may finish within what the HTTP drain left of the stop's grace
        # period (they end by their own timeout anyway); the consumer's stop and the relay's flush follow.
        await workers.stop(drain_s=runtime.stopping().left())
        await hub.stop()


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[None]:
    ctx = configure(app)
    async with app.state.runtime.db.transaction() as tx:
        await store.seed_rules(tx.conn, handlers.default_rules())
        await store.ensure_digest_timer(
            tx.conn, next_digest_at(ctx.clock.now(), ctx.config.digest_hour, ctx.config.digest_timezone))
    async with background(app, ctx, push=True, timers=True, deliveries=not ctx.config.delivery_worker):
        yield


lifecycle = APIRouter(lifespan=running)

service = ServiceDefinition(
    name="notifications",
    routers=(lifecycle, rules, inbox, stream, webhooks, console),
    migrations=Path(__file__).parent / "migrations",
    handlers=handlers.HANDLERS,
)
