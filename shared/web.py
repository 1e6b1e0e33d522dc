"""The HTTP face every service shares: health, readiness, metrics, problem+json errors,
bearer-token authentication, a body size limit, request metrics and trace context."""

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import metrics, tracing
from shared.auth import InvalidToken, Principal, verify_token
from shared.context import Cause, current_cause
from shared.errors import DomainError
from shared.org import Organisation, Role

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        return problem(exc.status, exc.title, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]} for e in exc.errors()
        ]
        fields = ", ".join(e["field"] or "(body)" for e in errors)
        return problem(422, "Unprocessable Content", f"invalid fields: {fields}", errors=errors)

    # PostgreSQL text cannot hold U+0000: a NUL anywhere in the input is the caller's error, found by the
    # database before anything is written.
    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    @app.exception_handler(asyncpg.UntranslatableCharacterError)
    async def unstorable_text(_: Request, exc: asyncpg.DataError) -> JSONResponse:
        return problem(422, "Unprocessable Content", "text must not contain the NUL character (U+0000)")

    # Starlette's class: the router raises it for unknown paths and methods (404, 405).
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}.get(
            exc.status_code, "Error"
        )
        response = problem(exc.status_code, title, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return problem(500, "Internal Server Error", "an unexpected error occurred; it has been logged")


_bearer = HTTPBearer(auto_error=False)


# Dependencies are async: FastAPI runs a plain `def` dependency on its threadpool, a thread
# hop per request for work that never blocks.
async def organisation(request: Request) -> Organisation:
    org: Organisation = request.app.state.org
    return org


async def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None:
        raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    try:
        return verify_token(credentials.credentials, request.app.state.settings.signing_secret, request.app.state.org)
    except InvalidToken as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: CurrentPrincipal) -> Principal:
        if principal.role not in roles:
            allowed = ", ".join(roles)
            raise HTTPException(403, f"this action needs one of the roles: {allowed}")
        return principal

    return check


def install_probes(app: FastAPI, readiness: Callable[[], Awaitable[dict[str, str]]]) -> None:
    """/healthz: the process is alive; /readyz: its dependencies answer; /metrics."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        problems = await readiness()
        metrics.ready.set(0 if problems else 1)
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> PlainTextResponse:
        # Readiness as a metric, so an alert sees it wherever Prometheus scrapes (not only where probes run).
        metrics.ready.set(0 if await readiness() else 1)
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class RequestContextMiddleware:
    """Per request: a body size limit, trace context, and the HTTP metrics."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_too_large(send, self.max_body_bytes)
            return
        span = tracing.start_span(f"{scope['method']}", headers.get("traceparent"), "server")
        traceparent = span.traceparent
        correlation_id = headers.get("x-correlation-id") or str(uuid.uuid4())
        token = current_cause.set(Cause(correlation_id=correlation_id, traceparent=traceparent))
        started = time.perf_counter()
        status = 500
        received = 0

        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise _BodyTooLarge()
            return message

        async def send_with_context(message: Message) -> None:
            nonlocal status
            if too_large:
                # FastAPI reports a failed body read as 400; the cause is the size: answer 413.
                if message["type"] == "http.response.start":
                    status = 413
                    await _send_too_large(send, self.max_body_bytes)
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"traceparent", traceparent.encode()),
                    (b"x-correlation-id", correlation_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_context)
        except _BodyTooLarge:
            if status != 413:
                status = 413
                await _send_too_large(send, self.max_body_bytes)
        finally:
            current_cause.reset(token)
            route = _route_template(scope)
            metrics.http_requests.labels(scope["method"], route, str(status)).inc()
            span.end(error=f"HTTP {status}" if status >= 500 else None, name=f"{scope['method']} {route}",
                     attributes={"http.request.method": scope["method"], "http.route": route,
                                 "http.response.status_code": status})
            metrics.http_duration.labels(scope["method"], route).observe(time.perf_counter() - started)


class _BodyTooLarge(Exception):
    pass


async def _send_too_large(send: Send, limit: int) -> None:
    response = problem(413, "Content Too Large", f"the request body exceeds {limit} bytes")
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _route_template(scope: Scope) -> str:
    """The matched route's path template, so metrics do not get one label per id."""
    matched = scope.get("route")
    if matched is not None and hasattr(matched, "path"):
        return str(matched.path)
    app = scope.get("app")
    router = getattr(app, "router", None)
    for route in getattr(router, "routes", []):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"
