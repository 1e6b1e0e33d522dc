"""Where a webhook may connect (services/notifications/targets.py), with a fake hosts table instead of DNS
and a fake network backend that records where it was asked to connect: nothing leaves the process."""

from collections.abc import Iterable
from typing import Any

import httpcore
import pytest

from services.notifications.domain import NetworkPolicy
from services.notifications.targets import BlockedAddress, CheckedBackend, TargetGuard
from tests.support.hosts import Hosts

ONLY_127_0_0_1 = NetworkPolicy.parse("127.0.0.1/32")


class Recording(httpcore.AsyncNetworkBackend):
    """Connects nowhere: records the address asked for, and refuses the ones listed as down."""

    def __init__(self, down: Iterable[str] = ()) -> None:
        self.connected: list[tuple[str, int]] = []
        self.down = set(down)

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        if host in self.down:
            raise httpcore.ConnectError(f"{host} refused the connection")
        self.connected.append((host, port))
        return httpcore.AsyncNetworkStream()


async def test_a_name_is_checked_once_and_its_checked_answer_is_what_the_connection_uses() -> None:
    hosts = Hosts({"allowed.test": [["127.0.0.1"], ["127.0.0.2"]]})  # rebinds on the second lookup
    network = Recording()
    backend = CheckedBackend(TargetGuard(ONLY_127_0_0_1, hosts, remember_s=30), network)
    await backend.connect_tcp("allowed.test", 8080)
    await backend.connect_tcp("allowed.test", 8080)
    assert network.connected == [("127.0.0.1", 8080), ("127.0.0.1", 8080)]
    assert hosts.lookups == ["allowed.test"]  # the remembered answer, with its verdict: never a second lookup


async def test_a_rebinding_answer_is_refused_and_nothing_is_connected() -> None:
    hosts = Hosts({"rebinding.test": [["127.0.0.1"], ["127.0.0.2"]]})
    network = Recording()
    guard = TargetGuard(ONLY_127_0_0_1, hosts, remember_s=0)  # nothing remembered: every connection looks up
    backend = CheckedBackend(guard, network)
    await backend.connect_tcp("rebinding.test", 80)
    with pytest.raises(BlockedAddress, match="127.0.0.2, a loopback address"):
        await backend.connect_tcp("rebinding.test", 80)
    assert network.connected == [("127.0.0.1", 80)]


@pytest.mark.parametrize(("host", "why"), [
    ("refused.test", "127.0.0.2, a loopback address"),
    ("mixed.test", "10.0.0.1, a private address"),  # one bad answer refuses the name
    ("metadata.test", "169.254.169.254, a metadata address"),
    ("127.0.0.2", "127.0.0.2, a loopback address"),
    ("::1", "::1, a loopback address"),
    ("unknown.test", "does not resolve"),
    ("empty.test", "does not resolve"),
])
async def test_refused_targets_never_get_a_connection(host: str, why: str) -> None:
    hosts = Hosts({"refused.test": [["127.0.0.2"]], "mixed.test": [["127.0.0.1", "10.0.0.1"]],
                   "metadata.test": [["169.254.169.254"]], "empty.test": [[]]})
    network = Recording()
    with pytest.raises(BlockedAddress, match=why):
        await CheckedBackend(TargetGuard(ONLY_127_0_0_1, hosts), network).connect_tcp(host, 80)
    assert network.connected == []


async def test_a_refused_answer_is_not_remembered() -> None:
    hosts = Hosts({"later.test": [["127.0.0.2"], ["127.0.0.1"]]})
    guard = TargetGuard(ONLY_127_0_0_1, hosts)
    with pytest.raises(BlockedAddress):
        await guard.addresses("later.test")
    assert await guard.addresses("later.test") == ["127.0.0.1"]


async def test_the_next_checked_address_is_tried_when_one_is_down() -> None:
    hosts = Hosts({"two.test": [["127.0.0.1", "::ffff:127.0.0.1"]]})
    network = Recording(down={"127.0.0.1"})
    await CheckedBackend(TargetGuard(ONLY_127_0_0_1, hosts), network).connect_tcp("two.test", 443)
    assert network.connected == [("::ffff:127.0.0.1", 443)]


async def test_ip_literals_need_no_resolver_and_urls_are_checked_as_delivery_parses_them() -> None:
    hosts = Hosts({})
    guard = TargetGuard(ONLY_127_0_0_1, hosts)
    await guard.check_url("http://127.0.0.1:9000/hook")
    for url, why in (("ftp://127.0.0.1/x", "http"), ("http:///x", "http"), ("http://[::1]:9000/x", "loopback"),
                     ("http://user:pw@127.0.0.2/x", "loopback")):
        with pytest.raises(BlockedAddress, match=why):
            await guard.check_url(url)
    assert hosts.lookups == []


async def test_unix_sockets_are_refused() -> None:
    with pytest.raises(BlockedAddress):
        await CheckedBackend(TargetGuard(ONLY_127_0_0_1, Hosts({})), Recording()).connect_unix_socket("/x")
