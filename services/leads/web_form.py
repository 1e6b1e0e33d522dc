"""The public web-to-lead form: an HTML form post from the company's site, no token.

Guarded by a honeypot field (hidden from people, filled in by bots) and a per-IP rate limit
(sliding window, per process: each replica counts for itself).
"""

import math
import os
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from services.leads import handlers
from services.leads.api import LeadIn, Org, capture_command
from shared.service import ServiceDatabase
from shared.web import problem

public = APIRouter(prefix="/v1", tags=["web-to-lead"])

HONEYPOT = "website"
_CONTACT_FIELDS = ("name", "company", "phone", "email")
_LEAD_FIELDS = ("region", "grade", "campaign_id")
_CONTROL_FIELDS = ("redirect", HONEYPOT)
# FUNNELCAST_LEADS_WEB_FORM_PER_MINUTE: form posts one IP address may make per minute.
PER_MINUTE = int(os.environ.get("FUNNELCAST_LEADS_WEB_FORM_PER_MINUTE", "5"))

THANK_YOU = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>感谢您的留言 / Thank you</title></head>
<body><h1>感谢您的留言！</h1><p>我们的销售顾问会尽快与您联系。</p>
<p lang="en">Thank you: a sales adviser will be in touch soon.</p></body></html>
"""


class RateLimiter:
    """At most `limit` hits per key within any `window_s` seconds."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> float | None:
        """Record a hit; None when allowed, else the seconds until the next one would be."""
        now = self.clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window_s - now
        hits.append(now)
        if len(self._hits) > 10_000:
            self._forget_idle(now)
        return None

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window_s]:
            del self._hits[key]


def _limiter(request: Request) -> RateLimiter:
    state = request.app.state
    if not hasattr(state, "web_form_limiter"):
        state.web_form_limiter = RateLimiter(PER_MINUTE, 60.0)
    limiter: RateLimiter = state.web_form_limiter
    return limiter


def _safe_redirect(target: str, request: Request) -> str | None:
    """A path on this site, or a URL on the site the form was posted from; anything else is ignored."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    form_site = {urlsplit(request.headers.get(h, "")).netloc for h in ("origin", "referer")} - {""}
    return target if parts.netloc in form_site else None


@public.post(
    "/web-to-lead",
    response_class=HTMLResponse,
    summary="Public capture form (form-encoded, no token); a thank-you page or the form's redirect",
)
async def web_to_lead(request: Request, db: ServiceDatabase, org: Org) -> Response:
    client = request.client.host if request.client else "unknown"
    wait = _limiter(request).retry_after(client)
    if wait is not None:
        response = problem(429, "Too Many Requests", "too many form posts from this address; try again later")
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return problem(415, "Unsupported Media Type", "post the form as application/x-www-form-urlencoded")
    form = await request.form(max_files=0, max_fields=120)
    fields = {k: v.strip() for k, v in form.multi_items() if isinstance(v, str)}
    if fields.get(HONEYPOT):
        raise RequestValidationError([{"loc": (HONEYPOT,), "msg": "this field must be left empty"}])
    known = (*_CONTACT_FIELDS, *_LEAD_FIELDS, *_CONTROL_FIELDS)
    contact = {k: fields.get(k) or None for k in _CONTACT_FIELDS} | {"name": fields.get("name", "")}
    raw = {
        "contact": contact,
        "source": "web_form",
        **{k: fields.get(k) or None for k in _LEAD_FIELDS},
        "attributes": {k: v for k, v in fields.items() if k not in known},
    }
    try:
        body = LeadIn.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    # Duplicate or not, the visitor sees the same answer: the form does not reveal who is known.
    await handlers.capture_lead(db, org, None, capture_command(body))
    target = _safe_redirect(fields.get("redirect", ""), request) if fields.get("redirect") else None
    if target is not None:
        return RedirectResponse(target, status_code=303)
    return HTMLResponse(THANK_YOU, status_code=200)
