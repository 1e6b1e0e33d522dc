"""Three scoring replicas share the partitions; while leads stream in, one is stopped with SIGTERM
(which drains it) and later another is killed with SIGKILL. Every lead still gets exactly one current
score, each cause is scored once, and the scored events of a lead carry gapless sequences (no event
applied twice, none lost). Real processes: `funnelcast up`."""

import asyncio
import json
import os
import signal
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from shared.auth import issue_token
from shared.org import Role
from shared.runtime.processes import ProcessRef
from shared.settings import Settings
from tests.e2e.test_cli_up_down import funnelcast, service_ports, stack_env, up_detached  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

LEADS = 240
KILL_AFTER = 80


async def capture(http: httpx.AsyncClient, n: int) -> str:
    body = {"contact": {"name": f"切换 {n}", "email": f"failover.{uuid.uuid4().hex[:12]}@example.cn"},
            "source": "web_form", "grade": "A", "region": "华东"}
    answer = await http.post("/v1/leads", json=body)
    assert answer.status_code == 201, answer.text
    lead_id: str = answer.json()["id"]
    return lead_id


async def applied_by(port: int) -> int:
    """Events the instance on `port` applied so far, from its /metrics."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("funnelcast_events_consumed_total{")))


async def every_replica_consuming(http: httpx.AsyncClient, replicas: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Captures warm-up leads until every replica has applied events; what each had applied by then."""
    deadline = time.monotonic() + 60
    while True:
        await asyncio.gather(*(capture(http, n) for n in range(8)))
        applied = {label: await applied_by(replica["port"]) for label, replica in replicas.items()}
        if all(applied.values()):
            return applied
        assert time.monotonic() < deadline, f"not every scoring replica consumed within 60 s: {applied}"
        await asyncio.sleep(0.5)


async def exit_time(process: ProcessRef, since: float) -> float:
    """Seconds from `since` until the process is gone (polled while the captures go on)."""
    for _ in range(600):  # 30 s at most
        if not process.alive():
            break
        await asyncio.sleep(0.05)
    return time.monotonic() - since


async def test_stopping_scoring_replicas_mid_flow_loses_and_repeats_nothing(
    stack_env: dict[str, str],  # noqa: F811
) -> None:
    await asyncio.to_thread(up_detached, stack_env, "--replicas", "scoring=3")
    report = json.loads((await asyncio.to_thread(funnelcast, "status", "--json", env=stack_env)).stdout)
    replicas = {s["label"]: s for s in report["services"] if s["name"] == "scoring"}
    # After 80 leads scoring-1 is stopped gracefully, after 160 scoring-2 is killed; scoring stays.
    plan = {KILL_AFTER: ("scoring-1", signal.SIGTERM), 2 * KILL_AFTER: ("scoring-2", signal.SIGKILL)}
    processes = {label: ProcessRef.of(replicas[label]["pid"]) for label, _ in plan.values()}
    settings = Settings(embedded_postgres_port=int(stack_env["FUNNELCAST_EMBEDDED_POSTGRES_PORT"]))
    token = issue_token("rep-1", Role.REP, settings.signing_secret, 600)
    leads_url = f"http://127.0.0.1:{service_ports(stack_env)['leads']}"

    lead_ids: list[str] = []
    applied: dict[str, int] = {}
    signalled: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=leads_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        # `up --detach` returns when every replica answers /readyz, which can be before the group has
        # given each its partitions; the stops below prove something only once all three consume.
        applied_before = await every_replica_consuming(http, replicas)
        started = time.monotonic()
        for first in range(0, LEADS, 8):
            lead_ids += await asyncio.gather(*(capture(http, n) for n in range(first, min(first + 8, LEADS))))
            if len(lead_ids) in plan:
                label, stop_signal = plan[len(lead_ids)]
                applied[label] = await applied_by(replicas[label]["port"]) - applied_before[label]
                os.kill(replicas[label]["pid"], stop_signal)
                signalled[label] = time.monotonic()
                if stop_signal is signal.SIGTERM:
                    graceful_exit = asyncio.create_task(exit_time(processes[label], signalled[label]))
        captured_in = time.monotonic() - started
    killed_at = signalled["scoring-2"]
    stopped_in = await graceful_exit
    assert stopped_in < 30, "SIGTERM did not stop scoring-1 within 30 s"  # grace 10 s and a margin

    pool = await asyncpg.create_pool(settings.database_url_for("scoring"), min_size=1, max_size=2)
    try:
        async def all_scored() -> bool:
            return int(await pool.fetchval("SELECT count(*) FROM lead_scores WHERE lead_id = ANY($1)", lead_ids)) \
                == LEADS

        deadline = time.monotonic() + 120
        while not await all_scored():
            assert time.monotonic() < deadline, "not every lead was scored within 120 s of the kill"
            await asyncio.sleep(0.25)
        all_scored_at = time.monotonic()

        # Each consumed event scored once; each lead's scored events numbered 1..k without gaps or repeats.
        repeated = await pool.fetchval(
            "SELECT count(*) FROM (SELECT cause_event_id FROM lead_score_history WHERE lead_id = ANY($1)"
            " GROUP BY cause_event_id HAVING count(*) > 1) AS twice", lead_ids)
        assert repeated == 0
        captures = await pool.fetchval(
            "SELECT count(*) FROM lead_score_history WHERE lead_id = ANY($1) AND cause_type = 'sales.lead.captured.v1'",
            lead_ids)
        assert captures == LEADS
        rows = await pool.fetch(
            "SELECT aggregateid, array_agg((payload->>'sequence')::int ORDER BY position) AS sequences,"
            " (SELECT count(*) FROM lead_score_history h WHERE h.lead_id = aggregateid) AS history"
            " FROM outbox WHERE type = 'sales.lead.scored.v1' AND aggregateid = ANY($1) GROUP BY aggregateid",
            lead_ids)
        assert len(rows) == LEADS
        for row in rows:
            assert row["sequences"] == list(range(1, len(row["sequences"]) + 1)), row
            assert len(row["sequences"]) == row["history"], row
    finally:
        await pool.close()

    assert all(applied.values()), f"a stopped replica had applied nothing, the test proved nothing: {applied}"
    print(  # noqa: T201 - the figures the issue's closing note quotes (run with -s)
        f"\nfailover: {LEADS} leads captured in {captured_in:.1f} s; SIGTERM to scoring-1 after {KILL_AFTER} "
        f"(it had applied {applied['scoring-1']} events, stopped {stopped_in:.1f} s later), SIGKILL to scoring-2 "
        f"after {2 * KILL_AFTER} (it had applied {applied['scoring-2']}); all scored "
        f"{all_scored_at - killed_at:.1f} s "
        f"after the kill; {sum(len(r['sequences']) for r in rows)} scored events, none repeated, none missing"
    )
    down = await asyncio.to_thread(funnelcast, "down", env=stack_env, timeout=120)
    assert down.returncode == 0, down.stderr
