"""Benchmark: lead captured (HTTP 201 from the leads service) -> notification pushed to the rep's open
WebSocket, and webhook deliveries per second to a loopback receiver.

Starts its own embedded Postgres and Tansu, an organisation of `--reps` reps (50 teams, generated),
one leads and one notifications service process (uvicorn, loopback) and one delivery worker
(services/notifications/worker.py; `--deliveries-in-service`: none, the service delivers), then:
- push: `--reps` WebSocket clients, one per rep, connected to /v1/stream from `--reader-processes`
  processes of their own (so the reading of 500 sockets does not share an event loop, or a core, with
  the load generator and count its lag as the product's); H-grade leads captured open-loop at
  `--rate`/s for `--seconds`, each owned by the next rep; for each lead, the time from its 201 answer
  to the arrival of its notification on its rep's socket: p50 / p95 / p99, then the same path hop by
  hop (wall-clock times from the databases and the clients, on one machine): assignment event written
  (its outbox row's transaction), published (the relay's mark after the broker's ack), applied (the
  notifications consumer's transaction start), committed (the notification's commit timestamp:
  Postgres runs with track_commit_timestamp), arrived on the socket; and each client process's event
  loop lag (how late a 10 ms timer fires), which shows whether the client itself was saturated;
- webhooks: `--subscriptions` subscriptions to sales.lead.captured.v1 on a loopback receiver (a
  process of its own), made before the push phase so its captures are delivered live; then
  each subscription replays them all (POST /v1/webhooks/{id}/replay): deliveries per second from the
  replays' acceptance until every delivery succeeded, and the receiver's count.
CPU per capture (push phase) and per replayed delivery (webhook phase) of each process: the services,
the worker, Postgres, the broker, the receiver (a bare ASGI app), the load client, the socket readers.

Run: .venv/bin/python -m bench.notifications [--reps 500] [--rate 200] [--seconds 20] [--subscriptions 4]
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import psutil
import uvicorn
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
WORKER = "services.notifications.worker"
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


class LoopLag:
    """How late a 10 ms timer fires in this event loop: a saturated client would count its own lag
    as the product's latency."""

    TICK_S = 0.01

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            due = time.perf_counter() + self.TICK_S
            await asyncio.sleep(self.TICK_S)
            self.lags.append(max(0.0, time.perf_counter() - due))

    def stop(self) -> list[float]:
        if self._task is not None:
            self._task.cancel()
        return self.lags


def read_sockets(port: int, signing_secret: str, reps: range, pipe: Connection) -> None:
    """A reader process: one WebSocket per rep of `reps`; answers "report" with the arrival times so
    far (wall clock, by subject), and "stop" with them and its loop lag."""
    asyncio.run(_read_sockets(port, signing_secret, reps, pipe))


async def _read_sockets(port: int, signing_secret: str, reps: range, pipe: Connection) -> None:
    arrived: dict[str, float] = {}
    lag = LoopLag()

    async def read(socket: ClientConnection) -> None:
        async for raw in socket:
            arrived.setdefault(json.loads(raw)["subject"], time.time())

    async def one(r: int) -> ClientConnection:
        token = issue_token(f"rep-{r}", "rep", signing_secret, 3600)
        socket = await connect(f"ws://127.0.0.1:{port}/v1/stream?token={token}", max_queue=None)
        json.loads(await socket.recv())  # ready
        return socket

    sockets: list[ClientConnection] = []
    for start in range(reps.start, reps.stop, 50):
        sockets += await asyncio.gather(*(one(r) for r in range(start, min(reps.stop, start + 50))))
    readers = [asyncio.create_task(read(socket)) for socket in sockets]
    lag.start()
    pipe.send("ready")
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, pipe.recv) != "stop":
        pipe.send(dict(arrived))
    pipe.send((arrived, lag.stop()))
    for task in readers:
        task.cancel()
    await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)


class Sockets:
    """One WebSocket per rep, spread over reader processes; arrival times of notifications by subject."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.arrived: dict[str, float] = {}
        self.lags: list[list[float]] = []
        self._pipes: list[Connection] = []
        self._children: list[multiprocessing.process.BaseProcess] = []

    async def open(self, port: int, settings: Settings, reps: int) -> None:
        spawn = multiprocessing.get_context("spawn")
        share = -(-reps // self.processes)
        for first in range(0, reps, share):
            ours, theirs = spawn.Pipe()
            child = spawn.Process(target=read_sockets, args=(
                port, settings.signing_secret, range(first, min(reps, first + share)), theirs), daemon=True)
            child.start()
            self._pipes.append(ours)
            self._children.append(child)
        for pipe in self._pipes:
            if await asyncio.to_thread(pipe.recv) != "ready":
                raise RuntimeError("a socket reader did not start")

    async def refresh(self) -> None:
        for pipe in self._pipes:
            pipe.send("report")
            self.arrived.update(await asyncio.to_thread(pipe.recv))

    def cpu_s(self) -> float:
        """CPU seconds the reader processes used so far."""
        total = 0.0
        for child in self._children:
            with contextlib.suppress(psutil.Error, ValueError):
                used = psutil.Process(child.pid).cpu_times()
                total += used.user + used.system
        return total

    async def close(self) -> None:
        for pipe in self._pipes:
            pipe.send("stop")
            arrived, lags = await asyncio.to_thread(pipe.recv)
            self.arrived.update(arrived)
            self.lags.append(lags)
        for child in self._children:
            child.join(timeout=30)


async def push_latency(leads: aiohttp.ClientSession, sockets: Sockets, reps: int, rate: float, seconds: float
                       ) -> dict[str, float]:
    """Capture open-loop, wait until every lead's notification arrived (at most two minutes); when
    each lead's 201 was read (wall clock, by lead id)."""
    answered: dict[str, float] = {}
    owners = itertools.cycle(range(reps))

    async def capture() -> None:
        n = next(_serial)
        body = {"contact": {"name": f"访客{n}", "company": f"公司{n}", "phone": f"139{n:08d}"},
                "source": "web_form", "grade": "H", "region": "华东", "owner_id": f"rep-{next(owners)}"}
        async with leads.post("/v1/leads", json=body) as response:
            if response.status != 201:
                raise RuntimeError(f"capture answered {response.status}: {await response.text()}")
            answered[(await response.json())["id"]] = time.time()

    await open_loop(rate, seconds, capture)

    async def all_pushed() -> bool:
        await sockets.refresh()
        return all(lead in sockets.arrived for lead in answered)

    with contextlib.suppress(AssertionError):  # what has not arrived after two minutes is reported missing
        await eventually(all_pushed, timeout=120, interval=0.2)
    return answered


class Receiver:
    """The webhook endpoint: a bare ASGI app (no framework: its CPU shares the 2 cores with what is
    measured) that answers POST /hook with 204 and GET /count with the number of hooks received."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/hook":
            self.count += 1
            status, body = 204, b""
        else:
            status, body = 200, json.dumps({"count": self.count}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


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


async def webhook_rate(notifications: httpx.AsyncClient, settings: Settings, hooks: Hooks, since: datetime,
                       postgres: psutil.Process) -> dict[str, Any]:
    """Replay every subscription's deliveries of the run at once; deliveries/s until all succeeded."""
    db = await asyncpg.connect(settings.database_url_for("notifications"))
    assert hooks.process is not None
    receiver = psutil.Process(hooks.process.pid)
    cpu_before = {"notifications": service_cpu_s("notifications"), "delivery worker": service_cpu_s(
        "notifications", WORKER), "postgres": server_cpu_s(postgres), "webhook receiver": process_cpu_s(receiver)}
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
        cpu_after = {"notifications": service_cpu_s("notifications"), "delivery worker": service_cpu_s(
            "notifications", WORKER), "postgres": server_cpu_s(postgres), "webhook receiver": process_cpu_s(receiver)}
        dead = await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'dead'")
    finally:
        await db.close()
    received = (await hooks.count() or 1) - 1
    return {"deliveries": total, "per_s": total / elapsed, "received": received - received_before,
            "live_deliveries": first, "dead": dead,
            "cpu_ms": {name: (cpu_after[name] - used) * 1000 / max(1, total) for name, used in cpu_before.items()}}


def process_cpu_s(process: psutil.Process) -> float:
    used = process.cpu_times()
    return float(used.user + used.system)


def cpu_seconds(postgres: psutil.Process, broker: psutil.Process, receiver: psutil.Process, sockets: Sockets
                ) -> dict[str, float]:
    """CPU seconds used so far by each part of the run: the service processes (the delivery worker's 0
    when there is none), Postgres (both services' databases), the broker, the webhook receiver, this load
    client and the socket readers."""
    return {"notifications": service_cpu_s("notifications"), "delivery worker": service_cpu_s("notifications", WORKER),
            "leads": service_cpu_s("leads"), "postgres": server_cpu_s(postgres), "broker": process_cpu_s(broker),
            "webhook receiver": process_cpu_s(receiver), "bench client": time.process_time(),
            "socket readers": sockets.cpu_s()}


async def run(settings: Settings, args: argparse.Namespace, postgres: psutil.Process, broker: psutil.Process
              ) -> dict[str, Any]:
    await kafka.ensure_topics(settings)
    org_file = settings.home / "org.toml"
    write_org(org_file, args.reps)
    os.environ["FUNNELCAST_ORG_FILE"] = str(org_file)
    os.environ["FUNNELCAST_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    # a starved receiver must not get its subscriptions disabled mid-run: retry soon, never disable
    os.environ["FUNNELCAST_NOTIFICATIONS_WEBHOOK_RETRY_BASE_S"] = "0.5"
    os.environ["FUNNELCAST_NOTIFICATIONS_WEBHOOK_DISABLE_AFTER"] = "1000000"
    # the deliveries in a process of their own (services/notifications/worker.py), unless asked otherwise
    os.environ["FUNNELCAST_NOTIFICATIONS_DELIVERY_WORKER"] = "false" if args.deliveries_in_service else "true"
    bench_settings = settings.model_copy(update={"org_file": org_file})
    since = datetime.now(UTC)
    with service_processes(bench_settings, "leads", 1) as leads_urls, \
            service_processes(bench_settings, "notifications", 1) as notification_urls, \
            service_processes(bench_settings, "notifications", 0 if args.deliveries_in_service else 1, WORKER):
        # the captures go through aiohttp: it costs this load client a fraction of httpx's CPU, and the
        # client shares the 2 cores with what it measures
        async with ready_clients(leads_urls, bench_settings, 4), \
                load_sessions(leads_urls, bench_settings, 256) as [leads], \
                ready_clients(notification_urls, bench_settings, 16, user="svc-bench", role="integration"
                              ) as [notifications]:
            hooks = Hooks()
            try:
                await hooks.start(notifications, args.subscriptions)
                sockets = Sockets(args.reader_processes)
                await sockets.open(int(notification_urls[0].rsplit(":", 1)[1]), bench_settings, args.reps)
                lag = LoopLag()
                try:
                    # warm-up: the notifications consumer group has joined once a first push arrives
                    await push_latency(leads, sockets, args.reps, 10, 1)
                    assert hooks.process is not None
                    receiver = psutil.Process(hooks.process.pid)
                    cpu_before = cpu_seconds(postgres, broker, receiver, sockets)
                    lag.start()
                    answered = await push_latency(leads, sockets, args.reps, args.rate, args.seconds)
                    cpu_ms = {name: (used - cpu_before[name]) * 1000 / len(answered)
                              for name, used in cpu_seconds(postgres, broker, receiver, sockets).items()}
                finally:
                    await sockets.close()
                # printed now: the webhook phase after it can take minutes on a busy machine
                hops = await hop_times(bench_settings, answered, sockets.arrived)
                if args.hops_json:
                    args.hops_json.write_text(json.dumps(hops))
                report_push(args, hops, len(answered), cpu_ms, [lag.stop(), *sockets.lags])
                return await webhook_rate(notifications, bench_settings, hooks, since, postgres)
            finally:
                await hooks.stop()


def report_push(args: argparse.Namespace, hops: dict[str, dict[str, float]], captures: int,
                cpu_ms: dict[str, float], loop_lags: list[list[float]]) -> None:
    latencies = [max(0.0, lead["arrived"] - lead["answered"]) for lead in hops.values() if "arrived" in lead]
    p = percentiles(latencies)
    print(f"push, capture 201 -> WebSocket, {captures} H-grade captures at {args.rate:g}/s, {args.reps} connected "
          f"reps ({len(latencies)} pushed within the wait): "
          f"p50 {p['p50']:.1f} ms, p95 {p['p95']:.1f} ms, p99 {p['p99']:.1f} ms")
    print("  hop by hop (ms; the assignment event's path; a push can beat the reading of its 201, counted as 0):")
    for name, start, end in HOPS:
        spans = [max(0.0, lead[end] - lead[start]) for lead in hops.values() if start in lead and end in lead]
        if len(spans) >= 2:
            h = percentiles(spans)
            print(f"    {name:<44} p50 {h['p50']:8.1f}  p95 {h['p95']:8.1f}  p99 {h['p99']:8.1f}  max "
                  f"{max(spans) * 1000:8.1f}")
    lags = [f"p99 {percentiles(lag)['p99']:.1f} ms, max {max(lag) * 1000:.1f} ms" for lag in loop_lags if len(lag) >= 2]
    print(f"  client event loop lag (load generator, then each socket reader process): {'; '.join(lags)}")
    print("  CPU per capture (its captured and assigned events, the live webhook deliveries of the captured "
          "one) from the first capture until all were pushed: "
          + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu_ms.items()), flush=True)


# (name, from, to): the times hop_times gathers for each lead
HOPS = [
    ("event written -> 201 read by the client", "written", "answered"),
    ("event written -> published (leads relay)", "written", "published"),
    ("published -> consumer transaction started", "published", "applied"),
    ("consumer transaction started -> committed", "applied", "committed"),
    ("committed -> arrived on the socket", "committed", "arrived"),
    ("event written -> arrived on the socket", "written", "arrived"),
]


async def hop_times(settings: Settings, answered: dict[str, float], arrived: dict[str, float]
                    ) -> dict[str, dict[str, float]]:
    """Each lead's times (epoch seconds) along its assignment event's path."""
    leads_db = await asyncpg.connect(settings.database_url_for("leads"))
    try:
        events = await leads_db.fetch(
            "SELECT aggregateid, extract(epoch FROM created_at) AS written, extract(epoch FROM published_at)"
            " AS published FROM outbox WHERE type = 'sales.lead.assigned.v1' AND aggregateid = ANY($1::text[])",
            list(answered))
    finally:
        await leads_db.close()
    notifications_db = await asyncpg.connect(settings.database_url_for("notifications"))
    try:
        stored = await notifications_db.fetch(
            "SELECT subject, extract(epoch FROM created_at) AS applied,"
            " extract(epoch FROM pg_xact_commit_timestamp(xmin)) AS committed FROM notifications"
            " WHERE rule_id = 'h-lead-assigned' AND subject = ANY($1::text[])", list(answered))
    finally:
        await notifications_db.close()
    times: dict[str, dict[str, float]] = {lead: {"answered": at} for lead, at in answered.items()}
    for row in events:
        times[row["aggregateid"]].update({k: float(row[k]) for k in ("written", "published") if row[k] is not None})
    for row in stored:
        times[row["subject"]].update({k: float(row[k]) for k in ("applied", "committed") if row[k] is not None})
    for lead, at in arrived.items():
        if lead in times:
            times[lead]["arrived"] = at
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--subscriptions", type=int, default=4)
    parser.add_argument("--reader-processes", type=int, default=2, help="processes reading the sockets")
    parser.add_argument("--hops-json", type=Path, help="write each lead's times along its path to this file")
    parser.add_argument("--deliveries-in-service", action="store_true",
                        help="webhook deliveries in the notifications process, not in a delivery worker")
    parser.add_argument("--receiver", type=int, help="(internal) serve the webhook receiver on this port")
    args = parser.parse_args()
    if args.receiver:
        uvicorn.run(Receiver(), host="127.0.0.1", port=args.receiver, log_config=None, access_log=False,
                    backlog=4096, http="httptools")
        return
    # the commit timestamps time the notification's commit (a hop of its own)
    with embedded_stack({"track_commit_timestamp": "on"}) as stack:
        assert stack.postgres.pid is not None and stack.broker.pid is not None
        hooks = asyncio.run(run(stack.settings, args, psutil.Process(stack.postgres.pid),
                                psutil.Process(stack.broker.pid)))
    print(f"webhooks: {hooks['deliveries']} replayed deliveries to a loopback receiver at {hooks['per_s']:.0f}/s "
          f"(receiver counted {hooks['received']}, dead {hooks['dead']}; {hooks['live_deliveries']} delivered live "
          "during the push phase)")
    if hooks["deliveries"]:
        print("  CPU per replayed delivery: "
              + ", ".join(f"{name} {ms:.2f} ms" for name, ms in hooks["cpu_ms"].items()))


if __name__ == "__main__":
    main()
