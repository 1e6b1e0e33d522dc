"""POST /v1/replays on a publishing service (leads, in-process, real Postgres and broker): the outbox
history re-published to a subscriber's topic, read complete and in per-aggregate order by a brand-new
consumer group running the example subscriber (examples/subscriber/), idempotent on a second replay."""

import asyncio
import json
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.leads.main import service
from shared import kafka
from shared.auth import issue_token
from shared.events.envelope import CloudEvent
from shared.org import Role
from shared.service import create_service_app
from shared.settings import Settings
from tests.support.topics import create_topic
from tests.support.waiting import eventually

SUBSCRIBER = Path(__file__).parents[2] / "examples" / "subscriber" / "subscriber.py"
ROLES = {"rep-1": Role.REP, "admin-1": Role.ADMIN, "svc-erp": Role.INTEGRATION}


@pytest.fixture(scope="module")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(service, settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


@pytest.fixture(scope="module")
async def outbox(settings: Settings, client: httpx.AsyncClient) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url_for("leads"), min_size=1, max_size=2)
    yield pool
    await pool.close()


def as_(settings: Settings, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(user, ROLES[user], settings.signing_secret, 600)}"}


async def capture_leads(client: httpx.AsyncClient, settings: Settings, count: int) -> list[str]:
    ids = []
    for n in range(count):
        body = {"contact": {"name": f"回放 {n}", "email": f"replay.{uuid.uuid4().hex[:12]}@example.cn"},
                "source": "api", "region": "华东", "owner_id": "rep-1"}  # rep-1 touches them below
        created = await client.post("/v1/leads", json=body, headers=as_(settings, "rep-1"))
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    for lead in ids[::2]:  # a second and third event on half the leads: order within an aggregate matters
        for channel in ("phone", "email"):
            touched = await client.post(f"/v1/leads/{lead}/touches", json={"channel": channel},
                                        headers=as_(settings, "rep-1"))
            assert touched.status_code == 201, touched.text
    return ids


async def published_history(pool: asyncpg.Pool, since: datetime) -> list[asyncpg.Record]:
    async def all_published() -> list[asyncpg.Record] | None:
        rows = await pool.fetch(
            "SELECT id::text, aggregateid, type, published_at FROM outbox WHERE created_at >= $1 ORDER BY position",
            since,
        )
        return rows if rows and all(r["published_at"] is not None for r in rows) else None

    return await eventually(all_published, timeout=30)


async def finished(client: httpx.AsyncClient, settings: Settings, replay_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        answer = await client.get(f"/v1/replays/{replay_id}", headers=as_(settings, "svc-erp"))
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert body["status"] in ("running", "done"), body
        return body if body["status"] == "done" else None

    return await eventually(done, timeout=30)


def run_subscriber(settings: Settings, topic: str, group: str, state: Path, expected: int, exit_status: int = 0
                   ) -> tuple[list[dict], dict]:
    """Run the example subscriber until `expected` events (handled or duplicate); what it handled and its
    summary. `exit_status`: the status it must end with (1 when it rejected messages)."""
    result = subprocess.run(
        [sys.executable, str(SUBSCRIBER), "--bootstrap", settings.kafka_bootstrap, "--group", group,
         "--topic", topic, "--state", str(state), "--session-timeout-ms", "6000", "--fetch-max-wait-ms", "10",
         "--max-events", str(expected), "--idle-exit-s", "20"],
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == exit_status, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    summary = json.loads(result.stderr.strip().splitlines()[-1])["summary"]
    return lines, summary


async def test_a_replay_reaches_a_new_consumer_group_complete_and_in_order(
    client: httpx.AsyncClient, outbox: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    since = datetime.now(UTC) - timedelta(milliseconds=1)
    await capture_leads(client, settings, 8)
    history = await published_history(outbox, since)
    assert len(history) >= 8 + 2 * 4
    target = f"erp.replay.{uuid.uuid4().hex[:8]}"
    await create_topic(settings.kafka_bootstrap_servers, target, 3)

    asked = await client.post("/v1/replays", json={"since": since.isoformat(), "target_topic": target},
                              headers=as_(settings, "svc-erp"))
    assert asked.status_code == 202, asked.text
    assert asked.json()["count"] == len(history) and asked.json()["target_topic"] == target
    progress = await finished(client, settings, asked.json()["id"])
    assert progress["sent"] == len(history) and progress["finished_at"] is not None

    state = tmp_path / "erp.sqlite"
    received, summary = run_subscriber(settings, target, f"erp-{uuid.uuid4().hex[:8]}", state, len(history))
    assert summary == {"handled": len(history), "duplicates": 0, "rejected": 0}
    assert sorted(e["id"] for e in received) == sorted(r["id"] for r in history)  # complete, no repeats
    expected_order: dict[str, list[str]] = defaultdict(list)
    for row in history:
        expected_order[row["aggregateid"]].append(row["id"])
    received_order: dict[str, list[str]] = defaultdict(list)
    for event in received:
        received_order[event["subject"]].append(event["id"])
    assert received_order == expected_order  # each aggregate's events in commit order
    assert all(e["traceparent"] for e in received)

    # The same range again, to the same topic: a new group with the subscriber's state skips every event.
    again = await client.post("/v1/replays", json={"since": since.isoformat(), "until": progress["until"],
                                                   "target_topic": target}, headers=as_(settings, "admin-1"))
    assert again.status_code == 202 and again.json()["count"] == len(history)
    await finished(client, settings, again.json()["id"])
    received, summary = run_subscriber(settings, target, f"erp-{uuid.uuid4().hex[:8]}", state, 2 * len(history))
    assert received == [] and summary == {"handled": 0, "duplicates": 2 * len(history), "rejected": 0}


async def test_the_subscriber_rejects_what_is_not_a_valid_event_and_handles_the_rest(
    client: httpx.AsyncClient, outbox: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """Ahead of a replay of real events, on one partition: a CloudEvent whose data breaks its type's schema
    and a message that is not JSON. Both are rejected (stderr, exit status 1), the real events handled."""
    since = datetime.now(UTC) - timedelta(milliseconds=1)
    await capture_leads(client, settings, 2)
    history = await published_history(outbox, since)
    target = f"erp.rejects.{uuid.uuid4().hex[:8]}"
    await create_topic(settings.kafka_bootstrap_servers, target, 1)
    lead = history[0]["aggregateid"]
    broken = CloudEvent(type="sales.lead.captured.v1", source="/funnelcast/leads", subject=lead,
                        data={"lead_id": lead, "grade": "not a grade"})
    producer = kafka.producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(target, broken.to_bytes(), key=lead.encode())
        await producer.send_and_wait(target, b"{not json", key=lead.encode())
    finally:
        await producer.stop()
    asked = await client.post("/v1/replays", json={"since": since.isoformat(), "target_topic": target},
                              headers=as_(settings, "svc-erp"))
    assert asked.status_code == 202, asked.text
    await finished(client, settings, asked.json()["id"])

    received, summary = run_subscriber(settings, target, f"erp-{uuid.uuid4().hex[:8]}", tmp_path / "erp.sqlite",
                                       len(history), exit_status=1)
    assert summary == {"handled": len(history), "duplicates": 0, "rejected": 2}
    assert sorted(e["id"] for e in received) == sorted(r["id"] for r in history)
    assert broken.id not in {e["id"] for e in received}


async def test_replays_are_for_admins_and_integrations_with_checked_requests(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    since = datetime.now(UTC).isoformat()
    assert (await client.post("/v1/replays", json={"since": since})).status_code == 401
    refused = await client.post("/v1/replays", json={"since": since}, headers=as_(settings, "rep-1"))
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
    admin = as_(settings, "admin-1")
    foreign = await client.post("/v1/replays", json={"since": since, "event_types": ["sales.lead.scored.v1"]},
                                headers=admin)
    assert foreign.status_code == 422 and "does not publish sales.lead.scored.v1" in foreign.json()["detail"]
    own_topic = await client.post("/v1/replays", json={"since": since, "target_topic": "sales.scores"}, headers=admin)
    assert own_topic.status_code == 422
    backwards = await client.post(
        "/v1/replays", json={"since": since, "until": "2020-01-01T00:00:00Z"}, headers=admin
    )
    assert backwards.status_code == 422
    naive = await client.post("/v1/replays", json={"since": "2026-01-01T00:00:00"}, headers=admin)
    assert naive.status_code == 422
    missing = await client.get(f"/v1/replays/{uuid.uuid4()}", headers=admin)
    assert missing.status_code == 404
    ancient = await client.post("/v1/replays", json={"since": "0001-01-01T00:00:00+14:00"}, headers=admin)
    assert ancient.status_code == 422 and "out of range" in ancient.json()["detail"]

    # One replay at a time per instance: of two asked together, the second is refused until the first ends.
    recent = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    both = await asyncio.gather(*(client.post("/v1/replays", json={"since": recent, "target_topic": "erp.twice"},
                                              headers=admin) for _ in range(2)))
    assert sorted(a.status_code for a in both) == [202, 409]
    [started] = [a.json() for a in both if a.status_code == 202]
    await finished(client, settings, started["id"])


async def test_a_replay_of_chosen_types_to_the_source_topics(
    client: httpx.AsyncClient, outbox: asyncpg.Pool, settings: Settings
) -> None:
    since = datetime.now(UTC) - timedelta(milliseconds=1)
    await capture_leads(client, settings, 2)
    history = await published_history(outbox, since)
    captured = [r for r in history if r["type"] == "sales.lead.captured.v1"]
    asked = await client.post(
        "/v1/replays", json={"since": since.isoformat(), "event_types": ["sales.lead.captured.v1"]},
        headers=as_(settings, "admin-1"),
    )
    assert asked.status_code == 202 and asked.json()["count"] == len(captured) == 2
    assert (await finished(client, settings, asked.json()["id"]))["sent"] == 2
    listed = await client.get("/v1/replays", headers=as_(settings, "admin-1"))
    assert asked.json()["id"] in [r["id"] for r in listed.json()]


async def test_a_replay_shows_its_progress_while_it_runs(
    client: httpx.AsyncClient, outbox: asyncpg.Pool, settings: Settings
) -> None:
    """A history of 20 batches (a real event's payload under 20,000 new ids, written into the outbox as
    published, removed after): GET /v1/replays/{id} answers `running` with 0 < sent < count before `done`."""
    since = datetime.now(UTC) - timedelta(milliseconds=1)
    await capture_leads(client, settings, 1)
    [real, *_] = await published_history(outbox, since)
    marker = f"progress-{uuid.uuid4().hex[:8]}"
    await outbox.execute(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, topic, payload, published_at)"
        " SELECT copy.id, o.aggregatetype, $2, o.type, o.topic, jsonb_set(o.payload, '{id}', to_jsonb(copy.id::text)),"
        " now() FROM outbox o CROSS JOIN (SELECT gen_random_uuid() AS id FROM generate_series(1, $3)) copy"
        " WHERE o.id = $1::uuid",
        real["id"], marker, 20_000,
    )
    try:
        target = f"erp.progress.{uuid.uuid4().hex[:8]}"
        await create_topic(settings.kafka_bootstrap_servers, target, 3)
        asked = await client.post("/v1/replays", json={"since": since.isoformat(), "target_topic": target},
                                  headers=as_(settings, "svc-erp"))
        assert asked.status_code == 202, asked.text
        count = asked.json()["count"]
        assert count > 20_000
        seen: list[tuple[str, int]] = []

        async def done() -> bool:
            answer = await client.get(f"/v1/replays/{asked.json()['id']}", headers=as_(settings, "svc-erp"))
            seen.append((answer.json()["status"], answer.json()["sent"]))
            return seen[-1][0] == "done"

        await eventually(done, timeout=60, interval=0.01)
        assert seen[-1] == ("done", count)
        assert any(status == "running" and 0 < sent < count for status, sent in seen), seen
    finally:
        await outbox.execute("DELETE FROM outbox WHERE aggregateid = $1", marker)
