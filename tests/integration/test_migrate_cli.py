"""`funnelcast migrate`: what each service does at start-up, as a step of its own (the Kubernetes Job)."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import with_database
from shared.topology import SERVICES


def migrate(postgres: EmbeddedPostgres, *services: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELCAST_")}
    env["FUNNELCAST_DATABASE_URL"] = postgres.url
    return subprocess.run([sys.executable, "-m", "shared.runtime.cli", "migrate", *services], env=env,
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])


async def test_migrate_brings_every_service_database_up_to_date_and_is_idempotent(postgres: EmbeddedPostgres) -> None:
    first = await asyncio.to_thread(migrate, postgres)
    assert first.returncode == 0, first.stderr
    assert [line.split(":")[0] for line in first.stdout.splitlines()] == list(SERVICES)
    for name, service in SERVICES.items():
        conn = await asyncpg.connect(with_database(postgres.url, service.database))
        try:
            applied = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            assert {"shared/0001_outbox_inbox.sql", "shared/0003_replays.sql"} <= applied, name
            assert await conn.fetchval("SELECT to_regclass('replays')") is not None
        finally:
            await conn.close()
    again = await asyncio.to_thread(migrate, postgres, "leads")
    assert again.returncode == 0 and again.stdout.strip() == "leads: 0 migrations applied"
    wrong = await asyncio.to_thread(migrate, postgres, "billing")
    assert wrong.returncode == 2 and "unknown services billing" in wrong.stderr
