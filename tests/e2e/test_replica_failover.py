"""Two scoring replicas share the partitions; one is killed with SIGKILL (or stopped with SIGTERM,
which drains it) while leads stream in. Every lead still gets exactly one current score, each cause is
scored once, and the scored events of a lead carry gapless sequences (no event applied twice, none
lost). Real processes: `funnelcast up`."""

import asyncio
import json
import os
import signal
import time
import uuid

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


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_stopping_one_of_two_scoring_replicas_mid_flow_loses_and_repeats_nothing(
    stack_env: dict[str, str], stop_signal: signal.Signals  # noqa: F811
) -> None:
    await asyncio.to_thread(up_detached, stack_env, "--replicas", "scoring=2")
    report = json.loads((await asyncio.to_thread(funnelcast, "status", "--json", env=stack_env)).stdout)
    [replica] = [s for s in report["services"] if s["label"] == "scoring-1"]
    replica_process = ProcessRef.of(replica["pid"])
    settings = Settings(embedded_postgres_port=int(stack_env["FUNNELCAST_EMBEDDED_POSTGRES_PORT"]))
    token = issue_token("rep-1", Role.REP, settings.signing_secret, 600)
    leads_url = f"http://127.0.0.1:{service_ports(stack_env)['leads']}"

    lead_ids: list[str] = []
    async with httpx.AsyncClient(base_url=leads_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        started = time.monotonic()
        for first in range(0, LEADS, 8):
            lead_ids += await asyncio.gather(*(capture(http, n) for n in range(first, min(first + 8, LEADS))))
            if len(lead_ids) == KILL_AFTER:
                replica_applied = await applied_by(replica["port"])
                os.kill(replica["pid"], stop_signal)
                killed_at = time.monotonic()
        captured_in = time.monotonic() - started
    if stop_signal is signal.SIGTERM:  # a graceful stop ends within the shutdown grace (10 s) and a margin
        while replica_process.alive():
            assert time.monotonic() - killed_at < 30, "SIGTERM did not stop the replica within 30 s"
            await asyncio.sleep(0.1)
        stopped_in = time.monotonic() - killed_at

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

    assert replica_applied > 0, "the killed replica had no partitions: the test proved nothing"
    print(  # noqa: T201 - the figures the issue's closing note quotes (run with -s)
        f"\nfailover: {LEADS} leads captured in {captured_in:.1f} s, {stop_signal.name} to scoring-1 after "
        f"{KILL_AFTER} (it had applied {replica_applied} events); "
        f"all scored {all_scored_at - killed_at:.1f} s after the signal; {sum(len(r['sequences']) for r in rows)} "
        f"scored events, none repeated, none missing"
        + (f"; the replica stopped {stopped_in:.1f} s after SIGTERM" if stop_signal is signal.SIGTERM else "")
    )
    down = await asyncio.to_thread(funnelcast, "down", env=stack_env, timeout=120)
    assert down.returncode == 0, down.stderr
