"""Where a webhook may connect, enforced on the connection itself (DNS rebinding).

Checking a URL's host and then letting the HTTP client resolve the name again leaves a window: the
second answer may be another address (a name with a short TTL that first answers a public address,
then 127.0.0.1 or the cloud metadata address). So resolution and the check happen once, inside the
delivery client's network backend, and the connection goes to the very address that passed:

- `TargetGuard.addresses(host)` resolves a host (an IP literal is its own answer), refuses it when any
  answer is an address the `NetworkPolicy` refuses, and remembers a passed answer for `remember_s`
  (a short TTL of our own: the verdict is remembered with the addresses it was given for, never
  for the name alone).
- `CheckedBackend` is an httpcore network backend (httpcore's documented extension point for how
  connections are opened): `connect_tcp(host, port)` asks the guard and connects to the checked
  addresses, in the resolver's order. httpcore then starts TLS with the URL's host as the server
  name (SNI and certificate check) and sends the URL's host in the Host header: only the address
  is pinned. Connections are pooled per URL origin, so a kept-alive connection also goes to an
  address that was checked when it opened.

Tests inject `resolve` (a fake hosts table) instead of real DNS.
"""

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

from services.notifications.domain import NetworkPolicy

Resolve = Callable[[str], Awaitable[list[str]]]


class BlockedAddress(Exception):
    pass


async def resolve_with_dns(host: str) -> list[str]:
    """The host's addresses from the system resolver, in its order of preference, each once."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class TargetGuard:
    def __init__(self, policy: NetworkPolicy, resolve: Resolve = resolve_with_dns, remember_s: float = 30.0) -> None:
        self.policy = policy
        self._resolve = resolve
        self._remember_s = remember_s
        self._passed: dict[str, tuple[float, list[str]]] = {}  # host -> (until when, its checked addresses)

    async def addresses(self, host: str) -> list[str]:
        """The addresses to connect to for `host`, every one of them permitted; BlockedAddress otherwise."""
        literal = _is_ip_literal(host)
        if literal:
            answer = [host]
        else:
            remembered = self._passed.get(host)
            if remembered is not None and remembered[0] > time.monotonic():
                return remembered[1]
            try:
                answer = await self._resolve(host)
            except OSError as exc:  # socket.gaierror and friends
                raise BlockedAddress(f"{host} does not resolve: {exc}") from None
            if not answer:
                raise BlockedAddress(f"{host} does not resolve")
        for address in answer:
            kind = self.policy.refusal(address)
            if kind is not None:
                raise BlockedAddress(
                    f"{host} resolves to {address}, a {kind} address: webhooks go to public addresses only,"
                    " unless FUNNELCAST_WEBHOOK_ALLOWED_NETWORKS allows a private network")
        if not literal:
            self._passed[host] = (time.monotonic() + self._remember_s, answer)
        return answer

    async def check_url(self, url: str) -> None:
        """Refuse a URL that is not http(s) or whose host resolves to an address the policy refuses."""
        try:
            parsed = httpx.URL(url)  # parsed as the delivery will parse it
        except httpx.InvalidURL as exc:
            raise BlockedAddress(f"not a URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise BlockedAddress("the URL must be http(s)://host/...")
        await self.addresses(parsed.raw_host.decode("ascii"))


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """Opens a TCP connection only to an address the guard checked for the host asked for."""

    def __init__(self, guard: TargetGuard, backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._guard = guard
        self._backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._guard.addresses(host)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took more than {timeout} s") from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                       socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # the next checked address, if any
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("webhooks are delivered over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)
