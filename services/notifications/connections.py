"""Kept-alive HTTP/1.1 connections for webhook deliveries, per origin, without a scan per request.

httpcore's `AsyncConnectionPool` re-examines every pooled connection whenever a request starts or
ends (`_assign_requests_to_connections`), asking each whether it has expired, which for an idle one
is a poll of its socket: with 64 connections that was 44 % of a delivery process's CPU, and the
largest part of a delivery's cost (services/notifications/README.md, *Measured*). The delivery loop
already bounds the attempts in flight (`webhook_concurrency`), so a pool needs no queue of its own:
`Connections` keeps the idle connections of each origin, newest last; an attempt takes the newest
(checking only that one: expired, or closed by the server), or opens a new connection through the
given network backend (`targets.CheckedBackend`: only to checked addresses), and gives it back when
its answer was read whole. Connections idle longer than the keep-alive are closed as they age out.
"""

import collections
import ssl
import time

import httpcore

Origin = tuple[bytes, bytes, int]  # scheme, host, port


class Connections:
    def __init__(self, backend: httpcore.AsyncNetworkBackend, ssl_context: ssl.SSLContext | None,
                 keepalive_s: float, max_idle: int) -> None:
        self._backend = backend
        self._ssl_context = ssl_context or httpcore.default_ssl_context()
        self._keepalive_s = keepalive_s
        self._max_idle = max_idle
        self._idle: dict[Origin, collections.deque[tuple[float, httpcore.AsyncHTTPConnection]]] = {}
        self._idle_count = 0
        self._next_sweep = 0.0

    async def request(self, request: httpcore.Request, read_limit: int) -> int:
        """Send the request, read at most `read_limit` bytes of the answer's body (and discard them);
        the answer's status code. The connection is kept for the next request of its origin only
        when the answer was read whole and the connection is reusable."""
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == b"https" else 80))
        connection = await self._take(origin)
        try:
            response = await connection.handle_async_request(request)
            try:
                read = 0
                async for chunk in response.aiter_stream():
                    read += len(chunk)
                    if read > read_limit:
                        break  # the rest is not wanted: the connection closes instead of being kept
            finally:
                await response.aclose()
        except BaseException:
            await connection.aclose()
            raise
        if connection.is_idle():
            await self._give_back(origin, connection)
        else:
            await connection.aclose()
        return int(response.status)

    async def aclose(self) -> None:
        idle, self._idle, self._idle_count = self._idle, {}, 0
        for connections in idle.values():
            for _, connection in connections:
                await connection.aclose()

    async def _take(self, origin: Origin) -> httpcore.AsyncHTTPConnection:
        await self._close_aged()
        idle = self._idle.get(origin)
        while idle:
            _, connection = idle.pop()
            self._idle_count -= 1
            if connection.is_available() and not connection.has_expired():
                return connection
            await connection.aclose()
        return httpcore.AsyncHTTPConnection(
            httpcore.Origin(*origin), ssl_context=self._ssl_context, keepalive_expiry=self._keepalive_s,
            network_backend=self._backend)

    async def _give_back(self, origin: Origin, connection: httpcore.AsyncHTTPConnection) -> None:
        if self._idle_count >= self._max_idle:
            await connection.aclose()
            return
        self._idle.setdefault(origin, collections.deque()).append((time.monotonic(), connection))
        self._idle_count += 1

    async def _close_aged(self) -> None:
        """Close the connections idle for longer than the keep-alive (the oldest are first in line); at
        most once a second."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        aged_before = now - self._keepalive_s
        for origin, idle in list(self._idle.items()):
            while idle and idle[0][0] < aged_before:
                _, connection = idle.popleft()
                self._idle_count -= 1
                await connection.aclose()
            if not idle:
                del self._idle[origin]

