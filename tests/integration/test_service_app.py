"""The shared HTTP face of a service (shared/service.py, shared/web.py), on a real app with its
lifespan against the session's Postgres and Tansu: probes, metrics, authentication,
problem+json errors, the body limit and trace context."""

import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, Request
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from shared.auth import issue_token
from shared.org import Role
from shared.service import ServiceDefinition, create_service_app
from shared.settings import Settings

MAX_BODY = 1024
PROBLEM_FIELDS = {"type", "title", "status", "detail"}
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")

# Body-reading routes, so the body limit can be seen on a route that consumes the body.
bodies = APIRouter(prefix="/v1/test-bodies")


class Note(BaseModel):
    text: str


@bodies.post("/raw")
async def raw_body(request: Request) -> dict[str, int]:
    return {"received": len(await request.body())}


@bodies.post("/json")
async def json_body(note: Note) -> dict[str, int]:
    return {"received": len(note.text)}


@pytest.fixture(scope="module")
async def service_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_body_bytes": MAX_BODY})


@pytest.fixture(scope="module")
async def client(service_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(ServiceDefinition(name="forecasting", routers=(bodies,)), service_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


def bearer(service_settings: Settings, user_id: str, role: Role | str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(user_id, role, service_settings.signing_secret, 600)}"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert PROBLEM_FIELDS <= body.keys(), body
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def http_requests_total(metrics_text: str, route: str, status: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "funnelcast_http_requests":
            return sum(
                s.value
                for s in family.samples
                if s.name == "funnelcast_http_requests_total"
                and s.labels.get("route") == route
                and s.labels.get("status") == status
                and s.labels.get("method") == "GET"
            )
    return 0.0


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_becomes_ready(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 30
    response = await client.get("/readyz")
    while response.status_code != 200 and time.monotonic() < deadline:
        assert response.status_code == 503, response.text
        response = await client.get("/readyz", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready"}


async def test_metrics_is_prometheus_text(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert "funnelcast_http_requests" in names  # counters drop their _total suffix in the family name
    assert "funnelcast_outbox_backlog" in names
    assert "funnelcast_http_request_duration_seconds" in names
    assert "# TYPE funnelcast_http_requests_total counter" in response.text
    assert "# TYPE funnelcast_outbox_backlog gauge" in response.text


async def test_me_without_a_token_is_401_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/me")
    body = assert_problem(response, 401)
    assert body["title"] == "Unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("authorization", ["Bearer not.a.token", "Bearer garbage", "Basic cmVwLTE6cHc=", "Bearer"])
async def test_me_with_a_malformed_token_is_401(client: httpx.AsyncClient, authorization: str) -> None:
    response = await client.get("/v1/me", headers={"Authorization": authorization})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_me_with_a_token_signed_with_another_secret_is_401(client: httpx.AsyncClient) -> None:
    token = issue_token("rep-1", Role.REP, "a-different-secret-of-reasonable-length", 600)
    response = await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    body = assert_problem(response, 401)
    assert "not valid" in str(body["detail"])


async def test_me_with_an_expired_token_is_401(client: httpx.AsyncClient, service_settings: Settings) -> None:
    token = issue_token("rep-1", Role.REP, service_settings.signing_secret, -60)
    response = await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    body = assert_problem(response, 401)
    assert "expired" in str(body["detail"])


async def test_me_with_a_valid_token(client: httpx.AsyncClient, service_settings: Settings) -> None:
    response = await client.get("/v1/me", headers=bearer(service_settings, "rep-1", Role.REP))
    assert response.status_code == 200, response.text
    assert response.json() == {"user_id": "rep-1", "role": "rep", "team": "east"}
    director = await client.get("/v1/me", headers=bearer(service_settings, "dir-1", "director"))
    assert director.json() == {"user_id": "dir-1", "role": "director", "team": None}


async def test_me_with_a_role_the_org_file_denies_is_401(client: httpx.AsyncClient, service_settings: Settings) -> None:
    response = await client.get("/v1/me", headers=bearer(service_settings, "rep-1", Role.ADMIN))
    assert_problem(response, 401)


async def test_an_unknown_path_is_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/no-such-thing")
    body = assert_problem(response, 404)
    assert body["title"] == "Not Found"


async def test_a_body_over_the_limit_is_413_problem(client: httpx.AsyncClient, service_settings: Settings) -> None:
    assert service_settings.max_body_bytes == MAX_BODY
    for path in ("/v1/me", "/healthz", "/v1/test-bodies/raw", "/v1/no-such-thing"):
        response = await client.post(path, content=b"x" * (MAX_BODY + 1))
        body = assert_problem(response, 413)
        assert str(MAX_BODY) in str(body["detail"])


async def test_a_body_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/test-bodies/raw", content=b"x" * MAX_BODY)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": MAX_BODY}


async def chunks(total: int, size: int = 256) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


async def test_a_streamed_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    # No Content-Length: the limit must be enforced while the body is read.
    response = await client.post("/v1/test-bodies/raw", content=chunks(MAX_BODY * 4))
    assert_problem(response, 413)


async def test_a_streamed_json_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/test-bodies/json", content=chunks(MAX_BODY * 4), headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413)


async def test_responses_carry_a_traceparent(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert TRACEPARENT.match(response.headers["traceparent"]), response.headers
    assert response.headers["x-correlation-id"]


async def test_an_incoming_traceparent_is_honoured(client: httpx.AsyncClient) -> None:
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = await client.get("/healthz", headers={"traceparent": f"00-{trace_id}-{span_id}-01"})
    match = TRACEPARENT.match(response.headers["traceparent"])
    assert match, response.headers
    assert match.group(1) == trace_id
    assert match.group(2) != span_id
    other = await client.get("/healthz")
    assert TRACEPARENT.match(other.headers["traceparent"]).group(1) != trace_id  # type: ignore[union-attr]


async def test_error_responses_carry_a_traceparent(client: httpx.AsyncClient) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    response = await client.get("/v1/me", headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    assert response.status_code == 401
    assert TRACEPARENT.match(response.headers["traceparent"]).group(1) == trace_id  # type: ignore[union-attr]


async def test_unmatched_requests_are_counted_without_their_raw_path(client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics")).text
    await client.get("/v1/no-such-thing/123")
    after = (await client.get("/metrics")).text
    assert http_requests_total(after, "unmatched", "404") - http_requests_total(before, "unmatched", "404") == 1
    assert "/v1/no-such-thing/123" not in after


async def test_request_metrics_use_the_route_template(client: httpx.AsyncClient, service_settings: Settings) -> None:
    before = (await client.get("/metrics")).text
    for _ in range(3):
        assert (await client.get("/v1/me", headers=bearer(service_settings, "rep-2", "rep"))).status_code == 200
    await client.get("/v1/me")
    after = (await client.get("/metrics")).text
    assert http_requests_total(after, "/v1/me", "200") - http_requests_total(before, "/v1/me", "200") == 3
    assert http_requests_total(after, "/v1/me", "401") - http_requests_total(before, "/v1/me", "401") == 1


async def test_request_metrics_label_a_top_level_route(client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics")).text
    await client.get("/healthz")
    await client.get("/healthz")
    after = (await client.get("/metrics")).text
    assert http_requests_total(after, "/healthz", "200") - http_requests_total(before, "/healthz", "200") == 2
