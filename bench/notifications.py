"""Benchmark: lead captured (HTTP 201 from the leads service) -> notification pushed to the rep's open
WebSocket, and webhook deliveries per second to a loopback receiver.

Starts its own embedded Postgres and Tansu, an organisation of `--reps` reps (50 teams, generated),
one leads and one notifications service process (uvicorn, loopback), then:
- push: `--reps` WebSocket clients, one per rep, connected to /v1/stream; H-grade leads captured
  open-loop at `--rate`/s for `--seconds`, each owned by the next rep; for each lead, the time from
  its 201 answer to the arrival of its notification on its rep's socket: p50 / p95 / p99;
- webhooks: `--subscriptions` subscriptions to sales.lead.captured.v1 on a loopback receiver (a
  process of its own), made before the push phase so its captures are delivered live; then
  each subscription replays them all (POST /v1/webhooks/{id}/replay): deliveries per second from the
  replays' acceptance until every delivery succeeded, and the receiver's count.

Run: .venv/bin/python -m bench.notifications [--reps 500] [--rate 200] [--seconds 20]
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import psutil
import uvicorn
from fastapi import FastAPI, Request, Response
from websockets.asyncio.client import ClientConnection, connect

from bench.harness import (
    embedded_stack,
    load_sessions,
    open_loop,
    percentiles,
    ready_clients,
    server_cpu_s,
    service_cpu_s,
    service_processes,
)
from shared import kafka
from shared.auth import issue_token
from shared.settings import Settings
from tests.support.waiting import eventually, free_port

TEAMS = 50
_serial = itertools.count(10_000_000)


def write_org(path: Path, reps: int) -> None:
    lines = ['[[users]]\nid = "admin-1"\nname = "管理员"\nrole = "admin"\n',
             '[[users]]\nid = "svc-bench"\nname = "bench"\nrole = "integration"\n']
    for t in range(TEAMS):
        lines.append(f'[[teams]]\nid = "team-{t}"\nname = "销售{t}部"\nregion = "华东"\nmanager = "mgr-{t}"\n')
        lines.append(f'[[users]]\nid = "mgr-{t}"\nname = "经理{t}"\nrole = "manager"\nteam = "team-{t}"\n')
    for r in range(reps):
        lines.append(f'[[users]]\nid = "rep-{r}"\nname = "销售{r}"\nrole = "rep"\nteam = "team-{r % TEAMS}"\n'
                     f'manager = "mgr-{r % TEAMS}"\n')
    path.write_text("\n".join(lines), encoding="utf-8")


class Sockets:
    """One WebSocket per rep; arrival times of notifications by subject."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.sockets: list[ClientConnection] = []
        self.readers: list[asyncio.Task[None]] = []

    async def open(self, port: int, settings: Settings, reps: int) -> None:
        async def one(r: int) -> None:
            token = issue_token(f"rep-{r}", "rep", settings.signing_secret, 3600)
            socket = await connect(f"ws://127.0.0.1:{port}/v1/stream?token={token}", max_queue=None)
            json.loads(await socket.recv())  # ready
            self.sockets.append(socket)
            self.readers.append(asyncio.create_task(self._read(socket)))

        for start in range(0, reps, 50):
            await asyncio.gather(*(one(r) for r in range(start, min(reps, start + 50))))

    async def _read(self, socket: ClientConnection) -> None:
        async for raw in socket:
            message = json.loads(raw)
            self.arrived.setdefault(message["subject"], time.perf_counter())

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*(s.close() for s in self.sockets), return_exceptions=True)


async def push_latency(leads: aiohttp.ClientSession, sockets: Sockets, reps: int, rate: float, seconds: float
                       ) -> tuple[list[float], int]:
    answered: dict[str, float] = {}
    owners = itertools.cycle(range(reps))

    async def capture() -> None:
        n = next(_serial)
        body = {"contact": {"name": f"访客{n}", "company": f"公司{n}", "phone": f"139{n:08d}"},
                "source": "web_form", "grade": "H", "region": "华东", "owner_id": f"rep-{next(owners)}"}
        async with leads.post("/v1/leads", json=body) as response:
            if response.status != 201:
                raise RuntimeError(f"capture answered {response.status}: {await response.text()}")
            answered[(await response.json())["id"]] = time.perf_counter()

    await open_loop(rate, seconds, capture)

    async def all_pushed() -> bool:
        return all(lead in sockets.arrived for lead in answered)

    with contextlib.suppress(AssertionError):  # what has not arrived after two minutes is reported missing
        await eventually(all_pushed, timeout=120, interval=0.2)
    # A push can beat the client's reading of its 201: that counts as 0, not as negative time.
    return [max(0.0, sockets.arrived[lead] - at) for lead, at in answered.items() if lead in sockets.arrived], len(
        answered)


class Receiver:
    def __init__(self) -> None:
        self.count = 0

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            await request.body()
            self.count += 1
            return Response(status_code=204)

        @app.get("/count")
        async def count() -> dict[str, int]:
            return {"count": self.count}

        return app


class Hooks:
    """A loopback receiver in a process of its own (`--receiver PORT`), and subscriptions to it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.ids: list[str] = []

    async def start(self, notifications: httpx.AsyncClient, subscriptions: int) -> None:
        command = [sys.executable, "-m", "bench.notifications", "--receiver", str(self.port)]
        self.process = subprocess.Popen(command)  # noqa: ASYNC220 - once, before anything is measured
        await eventually(self.count, timeout=60, interval=0.2)
        for _ in range(subscriptions):
            created = await notifications.post("/v1/webhooks", json={
                "url": f"http://127.0.0.1:{self.port}/hook", "event_types": ["sales.lead.captured.v1"]})
            created.raise_for_status()
            self.ids.append(created.json()["id"])

    async def count(self) -> int | None:
        try:
            async with httpx.AsyncClient() as client:
                return int((await client.get(f"http://127.0.0.1:{self.port}/count")).json()["count"]) + 1
        except httpx.HTTPError:
            return None

    async def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


async def webhook_rate(notifications: httpx.AsyncClient, settings: Settings, hooks: Hooks, since: datetime
                       ) -> dict[str, Any]:
    """Replay every subscription's deliveries of the run at once; deliveries/s until all succeeded."""
    db = await asyncpg.connect(settings.database_url_for("notifications"))
    try:
        first = await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
        received_before = (await hooks.count() or 1) - 1
        started = time.perf_counter()
        total = 0
        for subscription in hooks.ids:
            replay = await notifications.post(f"/v1/webhooks/{subscription}/replay",
                                              json={"since": since.isoformat()})
            replay.raise_for_status()
            total += replay.json()["count"]

        async def delivered() -> bool:
            done = await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE replay_of IS NOT NULL"
                                     " AND status = 'succeeded'")
            return bool(done >= total)

        await eventually(delivered, timeout=600, interval=0.1)
        elapsed = time.perf_counter() - started
        dead = await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'dead'")
    finally:
        await db.close()
    received = (await hooks.count() or 1) - 1
    return {"deliveries": total, "per_s": total / elapsed, "received": received - received_before,
            "live_deliveries": first, "dead": dead}


def cpu_seconds(postgres: psutil.Process) -> dict[str, float]:
    """CPU seconds used so far by each part of the run: the two service processes, Postgres (both
    services' databases) and this load client."""
    return {"notifications": service_cpu_s("notifications"), "leads": service_cpu_s("leads"),
            "postgres": server_cpu_s(postgres), "bench client": time.process_time()}


async def run(settings: Settings, args: argparse.Namespace, postgres: psutil.Process) -> dict[str, Any]:
    await kafka.ensure_topics(settings)
    org_file = settings.home / "org.toml"
    write_org(org_file, args.reps)
    os.environ["FUNNELCAST_ORG_FILE"] = str(org_file)
    os.environ["FUNNELCAST_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    # a starved receiver must not get its subscriptions disabled mid-run: retry soon, never disable
    os.environ["FUNNELCAST_NOTIFICATIONS_WEBHOOK_RETRY_BASE_S"] = "0.5"
    os.environ["FUNNELCAST_NOTIFICATIONS_WEBHOOK_DISABLE_AFTER"] = "1000000"
    bench_settings = settings.model_copy(update={"org_file": org_file})
    since = datetime.now(UTC)
    with service_processes(bench_settings, "leads", 1) as leads_urls, \
            service_processes(bench_settings, "notifications", 1) as notification_urls:
        # the captures go through aiohttp: it costs this load client a fraction of httpx's CPU, and the
        # client shares the 2 cores with what it measures
        async with ready_clients(leads_urls, bench_settings, 4), \
                load_sessions(leads_urls, bench_settings, 256) as [leads], \
                ready_clients(notification_urls, bench_settings, 16, user="svc-bench", role="integration"
                              ) as [notifications]:
            hooks = Hooks()
            try:
                await hooks.start(notifications, args.subscriptions)
                sockets = Sockets()
                await sockets.open(int(notification_urls[0].rsplit(":", 1)[1]), bench_settings, args.reps)
                try:
                    # warm-up: the notifications consumer group has joined once a first push arrives
                    await push_latency(leads, sockets, args.reps, 10, 1)
                    cpu_before = cpu_seconds(postgres)
                    latencies, captures = await push_latency(leads, sockets, args.reps, args.rate, args.seconds)
                    cpu_ms = {name: (used - cpu_before[name]) * 1000 / captures
                              for name, used in cpu_seconds(postgres).items()}
                finally:
                    await sockets.close()
                # printed now: the webhook phase after it can take minutes on a busy machine
                report_push(args, latencies, captures, await stored_after_event(bench_settings), cpu_ms)
                return await webhook_rate(notifications, bench_settings, hooks, since)
            finally:
                await hooks.stop()


def report_push(args: argparse.Namespace, latencies: list[float], captures: int, stored: list[float],
                cpu_ms: dict[str, float]) -> None:
    p, s = percentiles(latencies), percentiles(stored)
    print(f"push, capture 201 -> WebSocket, {captures} H-grade captures at {args.rate:g}/s, {args.reps} connected "
          f"reps ({len(latencies)} pushed within the wait): "
          f"p50 {p['p50']:.1f} ms, p95 {p['p95']:.1f} ms, p99 {p['p99']:.1f} ms")
    print(f"  of which event -> notification stored: p50 {s['p50']:.1f} ms, p95 {s['p95']:.1f} ms, "
          f"p99 {s['p99']:.1f} ms")
    print("  CPU per capture (its captured and assigned events, the live webhook deliveries of the captured "
          "one) from the first capture until all were pushed: "
          + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu_ms.items()), flush=True)


async def stored_after_event(settings: Settings) -> list[float]:
    """From each assignment event's time (the leads service's commit) to its notification's commit."""
    db = await asyncpg.connect(settings.database_url_for("notifications"))
    try:
        rows = await db.fetch("SELECT extract(epoch FROM created_at - cause_time) AS s FROM notifications"
                              " WHERE rule_id = 'h-lead-assigned'")
    finally:
        await db.close()
    return [float(r["s"]) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--subscriptions", type=int, default=4)
    parser.add_argument("--receiver", type=int, help="(internal) serve the webhook receiver on this port")
    args = parser.parse_args()
    if args.receiver:
        uvicorn.run(Receiver().app(), host="127.0.0.1", port=args.receiver, log_config=None, access_log=False,
                    backlog=4096)
        return
    with embedded_stack() as stack:
        assert stack.postgres.pid is not None
        hooks = asyncio.run(run(stack.settings, args, psutil.Process(stack.postgres.pid)))
    print(f"webhooks: {hooks['deliveries']} replayed deliveries to a loopback receiver at {hooks['per_s']:.0f}/s "
          f"(receiver counted {hooks['received']}, dead {hooks['dead']}; {hooks['live_deliveries']} delivered live "
          "during the push phase)")


if __name__ == "__main__":
    main()
