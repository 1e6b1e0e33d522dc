"""CORS: browsers on other origins may call the APIs only from the origins configured."""

import httpx

from shared.service import ServiceDefinition, create_service_app
from shared.settings import Settings

ALLOWED = "https://crm.example.com"
STRANGER = "https://evil.example.net"


def client(cors_origins: str) -> httpx.AsyncClient:
    # No lifespan: the middleware answers before anything needs the database.
    app = create_service_app(ServiceDefinition(name="forecasting"), Settings(cors_origins=cors_origins))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }


async def test_without_configured_origins_no_origin_is_allowed():
    async with client("") as http:
        answer = await http.get("/healthz", headers={"Origin": ALLOWED})
        refused_preflight = await http.options("/v1/me", headers=preflight(ALLOWED))
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in refused_preflight.headers


async def test_a_configured_origin_is_allowed_and_another_is_not():
    async with client(f"{ALLOWED}, https://other.example.com") as http:
        allowed = await http.get("/healthz", headers={"Origin": ALLOWED})
        allowed_preflight = await http.options("/v1/me", headers=preflight(ALLOWED))
        stranger = await http.get("/healthz", headers={"Origin": STRANGER})
        stranger_preflight = await http.options("/v1/me", headers=preflight(STRANGER))
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert allowed_preflight.status_code == 200
    assert "authorization" in allowed_preflight.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in stranger.headers
    assert stranger_preflight.status_code == 400
    assert "access-control-allow-origin" not in stranger_preflight.headers
