"""HTTP: webhook subscriptions for other enterprise systems (CONTRACT.md, Standard Webhooks).

Admins and integrations subscribe a URL to event types; every matching event is delivered signed
(`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), retried with
back-off, dead-lettered after the last try, and logged per subscription; a delivery or a time range
can be replayed; an endpoint that keeps failing is disabled and its owner told.
"""

import secrets
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from services.notifications import handlers, store
from services.notifications.domain import new_secret, secret_key
from services.notifications.targets import BlockedAddress
from shared.auth import Principal
from shared.errors import NotFound, Unprocessable
from shared.org import Role
from shared.service import ServiceDatabase
from shared.web import require_roles

Subscriber = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.INTEGRATION))]

webhooks = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class SubscriptionBody(BaseModel):
    url: str = Field(description="http(s) URL; it must not resolve to a private address unless allowed")
    event_types: list[str] = Field(min_length=1)
    secret: str | None = Field(None, description="whsec_<base64 key of 24-64 bytes>; omitted: one is generated "
                                                 "and returned once")


class EnabledBody(BaseModel):
    enabled: bool


class ReplayBody(BaseModel):
    since: AwareDatetime
    until: AwareDatetime | None = None
    event_types: list[str] | None = None


def _answer(row: Any, secret: str | None = None) -> dict[str, Any]:
    answer = {k: row[k] for k in ("id", "owner_id", "url", "enabled", "disabled_reason", "consecutive_failures",
                                  "created_at")}
    answer["id"] = str(row["id"])
    answer["event_types"] = list(row["event_types"])
    if secret is not None:
        answer["secret"] = secret
    return answer


async def _owned(db: Any, subscription_id: uuid.UUID, principal: Principal) -> Any:
    async with db.pool.acquire() as conn:
        row = await store.subscription(conn, str(subscription_id))
    if row is None or (principal.role is not Role.ADMIN and row["owner_id"] != principal.user_id):
        raise NotFound(f"there is no webhook subscription {subscription_id}")
    return row


@webhooks.post("", status_code=201)
async def subscribe(body: SubscriptionBody, principal: Subscriber, db: ServiceDatabase, request: Request
                    ) -> dict[str, Any]:
    unknown = [t for t in body.event_types if t not in handlers.KNOWN_EVENT_TYPES]
    if unknown:
        raise Unprocessable(f"event_types: unknown event types {', '.join(unknown)}")
    secret = body.secret or new_secret(secrets.token_bytes(32))
    try:
        secret_key(secret)
    except ValueError as exc:
        raise Unprocessable(f"secret: {exc}") from None
    try:
        await request.app.state.target_guard.check_url(body.url)
    except BlockedAddress as exc:
        raise Unprocessable(f"url: {exc}") from None
    async with db.transaction() as tx:
        row = await store.add_subscription(tx.conn, principal.user_id, body.url, sorted(set(body.event_types)),
                                           secret)
    return _answer(row, secret if body.secret is None else None)


@webhooks.get("")
async def list_subscriptions(principal: Subscriber, db: ServiceDatabase) -> dict[str, Any]:
    async with db.pool.acquire() as conn:
        rows = await store.subscriptions(conn, None if principal.role is Role.ADMIN else principal.user_id)
    return {"items": [_answer(r) for r in rows]}


@webhooks.get("/{subscription_id}")
async def get_subscription(subscription_id: uuid.UUID, principal: Subscriber, db: ServiceDatabase
                           ) -> dict[str, Any]:
    return _answer(await _owned(db, subscription_id, principal))


@webhooks.patch("/{subscription_id}")
async def set_enabled(subscription_id: uuid.UUID, body: EnabledBody, principal: Subscriber, db: ServiceDatabase
                      ) -> dict[str, Any]:
    """Re-enable a disabled endpoint (its pending deliveries resume) or disable one."""
    await _owned(db, subscription_id, principal)
    async with db.transaction() as tx:
        await store.set_enabled(tx.conn, str(subscription_id), body.enabled,
                                None if body.enabled else f"disabled by {principal.user_id}")
    return _answer(await _owned(db, subscription_id, principal))


@webhooks.delete("/{subscription_id}", status_code=204)
async def unsubscribe(subscription_id: uuid.UUID, principal: Subscriber, db: ServiceDatabase) -> None:
    await _owned(db, subscription_id, principal)
    async with db.transaction() as tx:
        await store.delete_subscription(tx.conn, str(subscription_id))


@webhooks.get("/{subscription_id}/deliveries")
async def delivery_log(
    subscription_id: uuid.UUID, principal: Subscriber, db: ServiceDatabase,
    status: Literal["pending", "succeeded", "dead"] | None = None, limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """The subscription's deliveries, newest first, each with its attempts (time, status, error)."""
    await _owned(db, subscription_id, principal)
    async with db.pool.acquire() as conn:
        rows = await store.deliveries(conn, str(subscription_id), status, limit)
        attempts = await store.attempts_of(conn, [r["id"] for r in rows])
    return {"items": [{**dict(r), "attempt_log": attempts.get(r["id"], [])} for r in rows]}


async def _wake(db: Any) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("SELECT pg_notify($1, '')", handlers.WEBHOOKS_DUE_CHANNEL)


@webhooks.post("/{subscription_id}/deliveries/{delivery_id}/replay", status_code=202)
async def replay_delivery(subscription_id: uuid.UUID, delivery_id: uuid.UUID, principal: Subscriber,
                          db: ServiceDatabase) -> dict[str, Any]:
    """Deliver the same CloudEvent again, as a new delivery (a new `webhook-id`)."""
    await _owned(db, subscription_id, principal)
    async with db.transaction() as tx:
        original = await store.delivery(tx.conn, str(subscription_id), str(delivery_id))
        if original is None:
            raise NotFound(f"there is no delivery {delivery_id} of this subscription")
        replay = await store.add_delivery(tx.conn, subscription_id, original["event_id"], original["event_type"],
                                          original["event_time"], original["payload"],
                                          replay_of=original["replay_of"] or original["id"])
        if replay is None:  # the subscription was deleted a moment ago
            raise NotFound(f"there is no webhook subscription {subscription_id}")
    await _wake(db)
    return {"id": str(replay), "replay_of": str(delivery_id)}


@webhooks.post("/{subscription_id}/replay", status_code=202)
async def replay_range(subscription_id: uuid.UUID, body: ReplayBody, principal: Subscriber, db: ServiceDatabase
                       ) -> dict[str, Any]:
    """Deliver again every event of a time range (by event time) this subscription was sent."""
    await _owned(db, subscription_id, principal)
    until: datetime | None = body.until
    async with db.transaction() as tx:
        originals = await store.deliveries_between(tx.conn, str(subscription_id), body.since, until,
                                                   body.event_types)
        for original in originals:
            await store.add_delivery(tx.conn, subscription_id, original["event_id"], original["event_type"],
                                     original["event_time"], original["payload"], replay_of=original["id"])
    await _wake(db)
    return {"count": len(originals)}
