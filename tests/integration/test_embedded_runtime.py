"""The embedded runtime's servers on their own: a real Postgres and a real Tansu broker."""

import os
import stat
from pathlib import Path

import asyncpg
import pytest

from shared import kafka
from shared.runtime.broker import BrokerNotFound, TansuBroker, find_tansu_binary
from shared.runtime.postgres import EmbeddedPostgres
from shared.runtime.processes import ProcessRef, accepts_connections
from shared.settings import Settings
from tests.support.waiting import free_port


async def test_postgres_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "data", free_port(), settings={"fsync": "off"})
    try:
        server.start()
        first_pid = server.pid
        assert first_pid is not None
        server.start()  # idempotent while running
        assert server.pid == first_pid

        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SHOW max_connections") == "200"
            await conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
            await conn.execute("INSERT INTO kept VALUES (1, '华东')")
        finally:
            await conn.close()

        server.stop()
        assert server.pid is None
        assert not ProcessRef(first_pid).alive()
        server.stop()  # a no-op when stopped

        server.start()
        assert server.pid not in (None, first_pid)
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT note FROM kept WHERE id = 1") == "华东"
        finally:
            await conn.close()
    finally:
        server.stop()
    assert server.pid is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
async def test_postgres_as_root_needs_no_access_to_the_parent_directories(tmp_path: Path) -> None:
    # Every new pytest session resets /tmp/pytest-of-root to 0700 while other sessions' servers start.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    server = EmbeddedPostgres(private / "data", free_port(), settings={"fsync": "off"})
    try:
        server.start()
        private.chmod(0o700)
        server.stop()
        server.start()
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT current_user") == "postgres"
        finally:
            await conn.close()
    finally:
        server.stop()


def test_postgres_url_names_the_port(tmp_path: Path) -> None:
    assert EmbeddedPostgres(tmp_path / "data", 15999).url == "postgresql://postgres@127.0.0.1:15999/postgres"


async def test_broker_comes_back_empty_and_usable_after_a_kill(tmp_path: Path) -> None:
    broker = TansuBroker(free_port(), tmp_path / "tansu.log")
    settings = Settings(kafka_bootstrap=broker.bootstrap, kafka_idempotence=False)
    try:
        broker.start()
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        assert broker.pid is not None
        assert accepts_connections(broker.port)

        broker.kill()
        assert broker.pid is None
        assert not accepts_connections(broker.port)

        broker.start()
        assert accepts_connections(broker.port)
        await kafka.ensure_topics(settings)
        producer = kafka.producer(settings)
        await producer.start()
        try:
            sent = await producer.send_and_wait("sales.leads", b"{}", key=b"lead-1")
        finally:
            await producer.stop()
        assert sent.topic == "sales.leads"
        assert sent.offset == 0  # memory storage: the restart started from empty topics
    finally:
        broker.stop()
    assert broker.pid is None


def test_an_explicit_tansu_binary_is_used(tmp_path: Path) -> None:
    binary = tmp_path / "my-tansu"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    assert find_tansu_binary(binary) == binary
    assert find_tansu_binary(None, Settings(tansu_bin=binary)) == binary


def test_a_bad_tansu_binary_is_reported_not_replaced(tmp_path: Path) -> None:
    with pytest.raises(BrokerNotFound, match="not a file"):
        find_tansu_binary(tmp_path / "missing")
    with pytest.raises(BrokerNotFound, match="FUNNELCAST_TANSU_BIN"):
        find_tansu_binary(None, Settings(tansu_bin=tmp_path / "missing"))
    not_executable = tmp_path / "tansu"
    not_executable.write_text("")
    not_executable.chmod(0o644)  # no x bit at all: not executable even for root
    with pytest.raises(BrokerNotFound, match="not executable"):
        find_tansu_binary(not_executable)


def test_without_an_override_the_wheel_binary_is_found() -> None:
    binary = find_tansu_binary(None, Settings())
    assert binary.is_file() and os.access(binary, os.X_OK)


def test_a_broker_that_cannot_start_says_why(tmp_path: Path) -> None:
    broken = tmp_path / "tansu"
    broken.write_text("#!/bin/sh\necho 'no storage today' >&2\nexit 3\n")
    broken.chmod(0o755)
    broker = TansuBroker(free_port(), tmp_path / "tansu.log", binary=broken)
    with pytest.raises(RuntimeError, match="(?s)status 3.*no storage today"):
        broker.start(timeout=5.0)
    assert broker.pid is None
