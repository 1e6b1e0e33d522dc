"""A service process keeps an idle HTTP connection open longer than clients keep theirs, so a client
never reuses a connection the server is closing at that instant (which failed benchmarks with
httpx.ReadError under load: uvicorn's default 5 s keep-alive is exactly httpx's)."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from services.opportunities.main import service
from shared.service import HTTP_KEEP_ALIVE_S, server_config
from shared.settings import Settings
from tests.support.waiting import eventually, free_port

HTTPX_IDLE_EXPIRY_S = httpx.Limits().keepalive_expiry or 0.0


@pytest.fixture(scope="module")
async def port(settings: Settings) -> AsyncIterator[int]:
    """One service served by uvicorn with the configuration `python -m services.<name>` uses."""
    chosen = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FUNNELCAST_OPPORTUNITIES_PORT", str(chosen))
        config = server_config(service, settings)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    await eventually(started, timeout=60)
    yield chosen
    server.should_exit = True
    await task


async def healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return lines[0]


def test_the_servers_idle_timeout_outlasts_the_clients() -> None:
    assert HTTP_KEEP_ALIVE_S > HTTPX_IDLE_EXPIRY_S > 0
    assert HTTP_KEEP_ALIVE_S > 60  # browsers keep idle connections about a minute


async def test_an_idle_connection_is_still_open_when_the_client_would_reuse_it(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await healthz(reader, writer) == b"HTTP/1.1 200 OK"
        # Wait for the server to close the idle connection, with httpx's idle expiry (plus a margin) as
        # the deadline: until then an httpx client may reuse it, so the server must not close it.
        with pytest.raises(TimeoutError):
            closed = await asyncio.wait_for(reader.read(1), timeout=HTTPX_IDLE_EXPIRY_S + 0.5)
            pytest.fail(f"the server closed the idle connection within httpx's idle expiry ({closed!r})")
        assert await healthz(reader, writer) == b"HTTP/1.1 200 OK"
    finally:
        writer.close()
