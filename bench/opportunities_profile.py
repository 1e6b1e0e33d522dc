"""Where a stage change's time goes on the service side: the app is called directly as ASGI (no HTTP
client, no sockets between them), against its own embedded Postgres and Tansu, so the client's CPU and
the test client's own per-request costs are out of the picture.

Prints the SQL round trips of one stage change, statement by statement (traced at asyncpg's
Connection), then the changes/s, the process CPU per change (the outbox relay included) and the
Postgres server's CPU per change (the server and its backends) of `--changes` changes with
`--concurrency` in flight; the share of a core the process uses while idle, and the CPU per change net
of it; and with `--profile` the top of a cProfile of that run.

Run: .venv/bin/python -m bench.opportunities_profile [--changes 2000] [--concurrency 16] [--profile]
"""

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import pstats
import time
from collections.abc import Iterator
from typing import Any

import psutil
from asyncpg import connection
from fastapi import FastAPI
from starlette.types import Message

from bench.harness import embedded_stack, server_cpu_s
from services.opportunities.main import service
from shared import kafka
from shared.auth import issue_token
from shared.service import create_service_app
from shared.settings import Settings

STAGES = ("bidding", "prospecting")
IDLE_S = 5.0


async def asgi(app: FastAPI, method: str, path: str, body: dict[str, Any], token: str) -> tuple[int, bytes]:
    """One request straight into the ASGI app: (status, body)."""
    raw = json.dumps(body).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode()),
                    (b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    received = False
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer["status"], answer["body"]


@contextlib.contextmanager
def traced_round_trips() -> Iterator[list[str]]:
    """Each statement sent on the connections the current task uses while inside, and the pool's reset of
    the connection on release if it runs one (in a task of its own); what another task sends on such a
    connection once it is back in the pool (the outbox relay's reads) is left out."""
    task = asyncio.current_task()
    seen: list[tuple[connection.Connection, bool, str]] = []
    sent: list[str] = []
    originals = {name: getattr(connection.Connection, name) for name in ("execute", "executemany", "_execute")}

    def tracing(name: str) -> Any:
        original = originals[name]

        async def traced(self: connection.Connection, query: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append((self, asyncio.current_task() is task, " ".join(str(query).split())))
            return await original(self, query, *args, **kwargs)

        return traced

    for name in originals:
        setattr(connection.Connection, name, tracing(name))
    try:
        yield sent
    finally:
        for name, original in originals.items():
            setattr(connection.Connection, name, original)
        ours = {id(conn) for conn, mine, _ in seen if mine}
        for conn, mine, statement in seen:
            if id(conn) not in ours:
                continue
            if mine or statement == " ".join(conn.get_reset_query().split()):
                sent.append(statement[:100])
            if not mine:  # the connection is back in the pool: what follows is not the change's
                ours.discard(id(conn))


async def run(settings: Settings, args: argparse.Namespace, postgres: psutil.Process) -> None:
    await kafka.ensure_topics(settings)
    app = create_service_app(service, settings)
    token = issue_token("dir-1", "director", settings.signing_secret, 3600)
    async with app.router.lifespan_context(app):
        ids = []
        for n in range(args.concurrency):
            status, body = await asgi(app, "POST", "/v1/opportunities", {
                "name": f"profile {n}", "account_name": f"profile account {n}", "amount": "1000.00",
                "owner_id": "rep-1"}, token)
            assert status == 201, body
            ids.append(json.loads(body)["id"])

        async def changes(opportunity_id: str, count: int, first: int = 0) -> None:
            """`count` moves back and forth, the first to STAGES[first]."""
            for i in range(first, first + count):
                status, body = await asgi(
                    app, "POST", f"/v1/opportunities/{opportunity_id}/stage", {"stage": STAGES[i % 2]}, token)
                assert status == 200, body

        await asyncio.gather(*(changes(i, 2) for i in ids))  # warm: statements prepared, back where they started
        with traced_round_trips() as sent:
            await changes(ids[0], 1)
            await asyncio.sleep(0.5)  # the pool resets the released connection in a task of its own
        print(f"round trips of one stage change: {len(sent)}")
        for statement in sent:
            print(f"  {statement}")
        await changes(ids[0], 1, first=1)  # back where it started
        # What the process spends doing nothing for the API (the consumer's fetch loop, broker and relay
        # checks): charged to every change below, it makes the CPU per change depend on the rate.
        idle_cpu, idle_wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(IDLE_S)
        idle_share = (time.process_time() - idle_cpu) / (time.perf_counter() - idle_wall)
        per_opportunity = 2 * max(1, args.changes // args.concurrency // 2)
        profiler = cProfile.Profile()
        cpu, server_cpu, wall = time.process_time(), server_cpu_s(postgres), time.perf_counter()
        if args.profile:
            profiler.enable()
        await asyncio.gather(*(changes(i, per_opportunity) for i in ids))
        if args.profile:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        server_cpu = server_cpu_s(postgres) - server_cpu
        done = per_opportunity * len(ids)
        print(f"{done:,} stage changes, {args.concurrency} in flight: {done / wall:,.0f} /s, "
              f"{1000 * cpu / done:.2f} ms CPU per change in this process (outbox relay included), "
              f"{1000 * server_cpu / done:.2f} ms in Postgres")
        print(f"idle, the process used {100 * idle_share:.1f} % of a core; net of that, "
              f"{1000 * (cpu - idle_share * wall) / done:.2f} ms CPU per change in this process")
        if args.profile:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
            print(out.getvalue())


def main() -> None:
    parsed = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parsed.add_argument("--changes", type=int, default=2000)
    parsed.add_argument("--concurrency", type=int, default=16)
    parsed.add_argument("--profile", action="store_true")
    parsed.add_argument("--top", type=int, default=30)
    args = parsed.parse_args()
    with embedded_stack() as stack:
        assert stack.postgres.pid is not None
        asyncio.run(run(stack.settings, args, psutil.Process(stack.postgres.pid)))


if __name__ == "__main__":
    main()
