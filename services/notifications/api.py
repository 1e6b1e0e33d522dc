"""HTTP: rules (admins change them), the caller's inbox, preferences, and the /console page."""

import uuid
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from services.notifications import handlers, store
from services.notifications.domain import InvalidRule, parse_preferences, parse_rule
from shared.auth import Principal
from shared.errors import NotFound, Unprocessable
from shared.org import Organisation, Role
from shared.service import ServiceDatabase
from shared.web import CurrentPrincipal, organisation, require_roles

Org = Annotated[Organisation, Depends(organisation)]
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]

rules = APIRouter(prefix="/v1/rules", tags=["rules"])


class RuleBody(BaseModel):
    """A rule: `event_type` and `conditions` (all must hold) select events; `recipients` are
    `{"kind": owner | owner_manager | managers | team | role | user | field, "value": role, user id, or
    the data field naming a user (e.g. approver_id)}`;
    `channels` from inbox, push, email; `templates` by language (zh-CN required, en) with
    `{name}` placeholders drawn from the event data (nested fields joined by `_`), `subject`,
    `event_type`, and `<field>_name` for user ids."""

    id: str | None = None
    event_type: str
    description: str = ""
    enabled: bool = True
    priority: Literal["normal", "high"] = "normal"
    conditions: list[dict[str, Any]] = Field(default_factory=list)
    recipients: list[dict[str, Any]]
    channels: list[str]
    templates: dict[str, dict[str, str]]


def _validated(body: RuleBody, org: Organisation, rule_id: str | None = None) -> Any:
    raw = body.model_dump()
    raw["id"] = rule_id or body.id
    try:
        return parse_rule(raw, handlers.KNOWN_EVENT_TYPES, org.users)
    except InvalidRule as exc:
        raise _invalid(exc) from None


def _invalid(exc: InvalidRule) -> Unprocessable:
    return Unprocessable("invalid rule: " + "; ".join(exc.problems))


@rules.get("")
async def list_rules(_: CurrentPrincipal, db: ServiceDatabase) -> dict[str, Any]:
    """Every rule, the shipped defaults included (until an admin changes or deletes them)."""
    async with db.pool.acquire() as conn:
        return {"items": await store.rule_definitions(conn)}


@rules.post("", status_code=201)
async def create_rule(body: RuleBody, admin: Admin, org: Org, db: ServiceDatabase) -> dict[str, Any]:
    rule = _validated(body, org)
    async with db.transaction() as tx:
        if not await store.put_rule(tx.conn, rule, admin.user_id):
            raise Unprocessable(f"id: a rule {rule.id} exists; PUT /v1/rules/{rule.id} replaces it")
    return dict(rule.to_json())


@rules.put("/{rule_id}")
async def replace_rule(rule_id: str, body: RuleBody, admin: Admin, org: Org, db: ServiceDatabase,
                       response: Response) -> dict[str, Any]:
    rule = _validated(body, org, rule_id)
    async with db.transaction() as tx:
        if await store.put_rule(tx.conn, rule, admin.user_id):
            response.status_code = 201
    return dict(rule.to_json())


@rules.delete("/{rule_id}", status_code=204)
async def delete_rule(rule_id: str, _: Admin, db: ServiceDatabase) -> None:
    async with db.transaction() as tx:
        if not await store.delete_rule(tx.conn, rule_id):
            raise NotFound(f"there is no rule {rule_id}")


inbox = APIRouter(prefix="/v1", tags=["inbox"])


@inbox.get("/notifications")
async def list_notifications(
    principal: CurrentPrincipal,
    db: ServiceDatabase,
    status: Literal["all", "unread"] = "all",
    before: int | None = Query(None, description="the `seq` of the oldest notification already shown"),
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    """The caller's notifications, newest first, with the unread count; page with `before`."""
    async with db.pool.acquire() as conn:
        rows = await store.inbox(conn, principal.user_id, unread_only=status == "unread", before_seq=before,
                                 limit=limit)
        unread = await store.unread_count(conn, principal.user_id)
    items = [store.as_message(r) for r in rows]
    return {"items": items, "unread": unread, "next_before": items[-1]["seq"] if len(items) == limit else None}


@inbox.get("/notifications/{notification_id}")
async def get_notification(notification_id: uuid.UUID, principal: CurrentPrincipal, db: ServiceDatabase
                           ) -> dict[str, Any]:
    async with db.pool.acquire() as conn:
        row = await store.notification(conn, str(notification_id))
    if row is None or row["recipient"] != principal.user_id:
        raise NotFound(f"you have no notification {notification_id}")
    return store.as_message(row)


class ReadBody(BaseModel):
    ids: list[uuid.UUID] | None = Field(None, description="the notifications to mark read; omitted: all of them")


@inbox.post("/notifications/read")
async def mark_read(body: ReadBody, principal: CurrentPrincipal, db: ServiceDatabase) -> dict[str, int]:
    async with db.transaction() as tx:
        ids = [str(i) for i in body.ids] if body.ids is not None else None
        changed = await store.mark_read(tx.conn, principal.user_id, ids)
        unread = await store.unread_count(tx.conn, principal.user_id)
    return {"marked": changed, "unread": unread}


@inbox.post("/notifications/{notification_id}/read")
async def mark_one_read(notification_id: uuid.UUID, principal: CurrentPrincipal, db: ServiceDatabase
                        ) -> dict[str, Any]:
    async with db.transaction() as tx:
        await store.mark_read(tx.conn, principal.user_id, [str(notification_id)])
        row = await store.notification(tx.conn, str(notification_id))
    if row is None or row["recipient"] != principal.user_id:
        raise NotFound(f"you have no notification {notification_id}")
    return store.as_message(row)


class QuietHours(BaseModel):
    start: time
    end: time


class PreferencesBody(BaseModel):
    language: Literal["zh-CN", "en"] = "zh-CN"
    opted_out: list[Literal["push", "email"]] = Field(default_factory=list)
    quiet_hours: QuietHours | None = None
    timezone: str = "Asia/Shanghai"


def _preferences_answer(prefs: Any) -> dict[str, Any]:
    quiet = None
    if prefs.quiet_start is not None and prefs.quiet_end is not None:
        quiet = {"start": prefs.quiet_start.strftime("%H:%M"), "end": prefs.quiet_end.strftime("%H:%M")}
    return {"language": prefs.language, "opted_out": sorted(prefs.opted_out), "quiet_hours": quiet,
            "timezone": prefs.timezone}


@inbox.get("/preferences")
async def get_preferences(principal: CurrentPrincipal, db: ServiceDatabase) -> dict[str, Any]:
    async with db.pool.acquire() as conn:
        return _preferences_answer(await store.preferences(conn, principal.user_id))


@inbox.put("/preferences")
async def put_preferences(body: PreferencesBody, principal: CurrentPrincipal, db: ServiceDatabase) -> dict[str, Any]:
    """Channel opt-out (push, e-mail; the inbox keeps everything), quiet hours in the user's time
    zone (e-mail waits until they end; normal-priority push waits in the inbox), the language."""
    raw = body.model_dump(mode="json")
    try:
        prefs = parse_preferences(raw)
    except InvalidRule as exc:
        raise Unprocessable("; ".join(exc.problems)) from None
    async with db.transaction() as tx:
        await store.put_preferences(tx.conn, principal.user_id, prefs)
    return _preferences_answer(prefs)


console = APIRouter(tags=["console"])
_CONSOLE = Path(__file__).parent / "static" / "console.html"


@console.get("/console", include_in_schema=False)
async def console_page() -> HTMLResponse:
    """The reps' page: sign in with a token, the live stream and the inbox (zh-CN by default)."""
    return HTMLResponse(_CONSOLE.read_text(encoding="utf-8"))
