"""Soak: a steady rate of lead captures for a long time, watched minute by minute.

Starts its own embedded Postgres and Tansu, `--leads-processes` leads service processes and one
scoring service process (as `funnelcast up` runs them), then sends captures through the HTTP API
open loop at `--rate`/s for `--minutes` (with aiohttp, whose CPU per request is a fraction of
httpx's: the client shares the cores with what it measures). A reader of `sales.scores` matches
every lead's first `sales.lead.scored.v1` to the moment its capture was sent. Every `--window` seconds it prints:
- captures sent, answered 201, failed; scored leads;
- capture -> scored latency p50 / p99 of the leads scored in the window;
- the broker backlog: the scoring group's lag on `sales.leads` (`funnelcast_consumer_lag` from the
  scoring service) and the outbox backlog of both services (`funnelcast_outbox_backlog`);
- the memory (proportional set size) of every process: each service, Postgres (all its processes),
  the broker;
- the CPU milliseconds each of them spent per capture answered in the window: a part whose cost
  per capture climbs while the rate holds is the one falling behind.
At the end: a PNG chart (`--chart`, default docs/soak.png) and the slope of memory and backlog over
the second half of the run, the signs of a leak or of falling behind.

Run: .venv/bin/python -m bench.soak [--rate 1000] [--minutes 10] [--window 60] [--leads-processes 2]
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import (
    embedded_stack,
    load_sessions,
    percentiles,
    ready_clients,
    server_cpu_s,
    service_processes,
)
from shared import kafka
from shared.settings import Settings
from tests.support.waiting import eventually

REGIONS = ("华东", "华北")
MEGABYTE = 1024 * 1024


@dataclass
class Window:
    """What happened in one window of the run."""

    minute: float
    sent: int = 0
    answered: int = 0
    failed: int = 0
    latencies_s: list[float] = field(default_factory=list)
    consumer_lag: float = 0.0
    outbox_backlog: float = 0.0
    memory_mb: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # each process's CPU seconds at the window's end
    cpu_ms_a_capture: dict[str, float] = field(default_factory=dict)


@dataclass
class Soak:
    windows: list[Window]
    sent_at: dict[str, float] = field(default_factory=dict)  # lead id -> when its capture was sent
    scored: set[str] = field(default_factory=set)
    failures: dict[str, int] = field(default_factory=dict)  # exception name -> captures it failed
    cpu_at_start: dict[str, float] = field(default_factory=dict)

    @property
    def current(self) -> Window:
        return self.windows[-1]


def resident_mb(process: psutil.Process, with_children: bool = False) -> float:
    """Proportional set size: a page shared by n processes counts 1/n in each, so a tree's sum is its
    memory (RSS would count Postgres's shared buffers once for every backend that touched them)."""
    processes = [process, *process.children(recursive=True)] if with_children else [process]
    total = 0
    for each in processes:
        try:
            total += each.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
    return total / MEGABYTE


def cpu_s(process: psutil.Process, with_children: bool = False) -> float:
    if with_children:
        return server_cpu_s(process)
    with contextlib.suppress(psutil.NoSuchProcess):
        used = process.cpu_times()
        return float(used.user + used.system)
    return 0.0


def listening_process(port: int) -> psutil.Process:
    for connection in psutil.net_connections(kind="tcp"):
        if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
            assert connection.pid is not None
            return psutil.Process(connection.pid)
    raise RuntimeError(f"nothing listens on port {port}")


def gauge_sum(metrics_text: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == name
        for sample in family.samples
    )


async def capture(client: aiohttp.ClientSession, soak: Soak, serial: int) -> None:
    body = {
        "contact": {"name": f"访客{serial}", "company": f"公司{serial % 500}", "phone": f"137{serial:08d}"},
        "source": "web_form",
        "grade": "HABC"[serial % 4],
        "region": REGIONS[serial % 2],
        "attributes": {"utm_source": "soak"},
    }
    window = soak.current
    window.sent += 1
    sent_at = time.perf_counter()
    try:
        async with client.post("/v1/leads", json=body) as response:
            answer = await response.json() if response.status == 201 else None
    except Exception as exc:  # noqa: BLE001 - a capture that failed in any way is counted, by kind
        window.failed += 1
        soak.failures[type(exc).__name__] = soak.failures.get(type(exc).__name__, 0) + 1
        return
    if answer is None:
        window.failed += 1
        return
    window.answered += 1
    soak.sent_at[answer["id"]] = sent_at


async def read_scores(settings: Settings, soak: Soak) -> None:
    consumer = kafka.consumer(settings, "sales.scores", group_id=None)
    await consumer.start()
    try:
        async for record in consumer:
            event = json.loads(record.value)
            if event["type"] != "sales.lead.scored.v1":
                continue
            lead_id = event["data"]["lead_id"]
            sent_at = soak.sent_at.get(lead_id)
            if sent_at is not None and lead_id not in soak.scored:
                soak.scored.add(lead_id)
                soak.current.latencies_s.append(time.perf_counter() - sent_at)
    finally:
        await consumer.stop()


async def observe(
    soak: Soak, metrics: dict[str, httpx.AsyncClient], processes: dict[str, tuple[psutil.Process, bool]]
) -> None:
    """Close the current window with the backlog, memory and CPU figures of its end."""
    window = soak.current
    window.cpu_s = {name: cpu_s(process, tree) for name, (process, tree) in processes.items()}
    before = soak.windows[-2].cpu_s if len(soak.windows) > 1 else soak.cpu_at_start
    if window.answered:  # none in the last window, which only waits for the scores still on their way
        window.cpu_ms_a_capture = {
            name: (used - before[name]) * 1000 / window.answered for name, used in window.cpu_s.items()
        }
    texts = {name: (await client.get("/metrics")).text for name, client in metrics.items()}
    window.consumer_lag = gauge_sum(texts["scoring"], "funnelcast_consumer_lag")
    window.outbox_backlog = sum(gauge_sum(text, "funnelcast_outbox_backlog") for text in texts.values())
    window.memory_mb = {name: resident_mb(process, tree) for name, (process, tree) in processes.items()}


async def watch(
    soak: Soak, urls: dict[str, str], processes: dict[str, tuple[psutil.Process, bool]], window_s: float
) -> None:
    """Every window: close it with its figures, print it, open the next. Its own connections, so a
    queue of captures never delays the observations."""
    started = time.perf_counter()
    metrics = {name: httpx.AsyncClient(base_url=url, timeout=30) for name, url in urls.items()}
    try:
        for k in itertools.count(1):
            await asyncio.sleep(max(0.0, started + k * window_s - time.perf_counter()))
            await observe(soak, metrics, processes)
            print(report_line(soak.current), flush=True)
            soak.windows.append(Window(minute=k * window_s / 60))
    finally:
        for client in metrics.values():
            await client.aclose()


async def warmed_up(leads: list[aiohttp.ClientSession], settings: Settings) -> None:
    """A capture through each leads process, scored, before the clock starts: the scoring service's
    consumer group joins after /readyz (3-4 s), which the first window's latencies would carry."""
    warm_up = Soak(windows=[Window(minute=0.0)])
    reader = asyncio.create_task(read_scores(settings, warm_up))
    try:
        for n, client in enumerate(leads):
            await capture(client, warm_up, 99_000_000 + n)  # above the serials of the measured captures

        async def scored() -> bool:
            return len(warm_up.scored) == len(leads)

        await eventually(scored, timeout=60, interval=0.1)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def send_captures(leads: list[aiohttp.ClientSession], soak: Soak, rate: float, seconds: float) -> None:
    """Open loop: capture i leaves at start + i / rate, whatever the answers before it, spread over the
    leads processes."""
    serial = itertools.count(uuid.uuid4().int % 10_000_000)
    spread = itertools.cycle(leads)
    started = time.perf_counter()
    in_flight: set[asyncio.Task[None]] = set()
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(capture(next(spread), soak, next(serial)))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)


def report_line(window: Window) -> str:
    latency = percentiles(window.latencies_s) if len(window.latencies_s) >= 2 else {"p50": 0.0, "p99": 0.0}
    memory = "  ".join(f"{name} {mb:,.0f}" for name, mb in window.memory_mb.items())
    cpu = "  ".join(f"{name} {ms:.2f}" for name, ms in window.cpu_ms_a_capture.items())
    return (
        f"{window.minute:6.1f}  sent {window.sent:6,}  201 {window.answered:6,}  failed {window.failed:4,}  "
        f"scored {len(window.latencies_s):6,}  p50 {latency['p50']:7.1f} ms  p99 {latency['p99']:7.1f} ms  "
        f"lag {window.consumer_lag:7,.0f}  outbox {window.outbox_backlog:7,.0f}  PSS MB: {memory}  "
        f"CPU ms a capture: {cpu}"
    )


def slope_per_minute(points: Iterable[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, value) points."""
    pairs = list(points)
    if len(pairs) < 2:
        return 0.0
    mean_x = sum(x for x, _ in pairs) / len(pairs)
    mean_y = sum(y for _, y in pairs) / len(pairs)
    spread = sum((x - mean_x) ** 2 for x, _ in pairs)
    return sum((x - mean_x) * (y - mean_y) for x, y in pairs) / spread if spread else 0.0


def trends(windows: list[Window]) -> dict[str, float]:
    second_half = windows[len(windows) // 2 :]
    result = {
        "consumer lag / min": slope_per_minute((w.minute, w.consumer_lag) for w in second_half),
        "outbox backlog / min": slope_per_minute((w.minute, w.outbox_backlog) for w in second_half),
    }
    for name in windows[0].memory_mb:
        result[f"{name} PSS MB / min"] = slope_per_minute((w.minute, w.memory_mb[name]) for w in second_half)
    steady = [w for w in second_half if w.answered]  # the last window, after sending ended, has no captures
    for name in windows[0].cpu_ms_a_capture:
        result[f"{name} CPU ms a capture / min"] = slope_per_minute(
            (w.minute, w.cpu_ms_a_capture[name]) for w in steady)
    return result


def chart(windows: list[Window], path: Path, rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file
    import matplotlib.pyplot as plt

    minutes = [w.minute for w in windows]
    figure, (latency_axis, backlog_axis, cpu_axis, memory_axis) = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
    for cut, style in (("p50", "-"), ("p99", "--")):
        values = [percentiles(w.latencies_s)[cut] if len(w.latencies_s) >= 2 else float("nan") for w in windows]
        latency_axis.plot(minutes, values, style, label=cut)
    latency_axis.set_ylabel("capture -> scored, ms")
    latency_axis.legend()
    latency_axis.set_title(f"Soak at {rate:,.0f} captures/s: leads + scoring, embedded Postgres and Tansu")
    backlog_axis.plot(minutes, [w.consumer_lag for w in windows], label="scoring lag on sales.leads")
    backlog_axis.plot(minutes, [w.outbox_backlog for w in windows], label="outbox backlog")
    backlog_axis.set_ylabel("events")
    backlog_axis.legend()
    steady = [w for w in windows if w.answered]
    for name in windows[0].cpu_ms_a_capture:
        cpu_axis.plot([w.minute for w in steady], [w.cpu_ms_a_capture[name] for w in steady], label=name)
    cpu_axis.set_ylabel("CPU ms a capture")
    cpu_axis.legend()
    for name in windows[0].memory_mb:
        memory_axis.plot(minutes, [w.memory_mb[name] for w in windows], label=name)
    memory_axis.set_ylabel("memory (PSS), MB")
    memory_axis.set_xlabel("minutes")
    memory_axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


async def run(
    settings: Settings, leads_urls: list[str], scoring_url: str, args: argparse.Namespace,
    servers: dict[str, psutil.Process],
) -> Soak:
    soak = Soak(windows=[Window(minute=0.0)])
    await kafka.ensure_topics(settings)
    services = {f"leads-{n}": url for n, url in enumerate(leads_urls, 1)} | {"scoring": scoring_url}
    async with (
        ready_clients(list(services.values()), settings, 1),
        load_sessions(leads_urls, settings, args.connections) as leads,
    ):
        await warmed_up(leads, settings)
        processes = {
            **{name: (listening_process(int(url.rsplit(":", 1)[1])), False) for name, url in services.items()},
            "postgres": (servers["postgres"], True),
            "broker": (servers["broker"], False),
        }
        soak.cpu_at_start = {name: cpu_s(process, tree) for name, (process, tree) in processes.items()}
        reader = asyncio.create_task(read_scores(settings, soak))
        watcher = asyncio.create_task(watch(soak, services, processes, args.window))
        await send_captures(leads, soak, args.rate, args.minutes * 60)

        # The scores still on their way count in the last window (bounded: a shortfall shows in the report).
        async def all_scored() -> bool:
            return len(soak.scored) >= len(soak.sent_at)

        with contextlib.suppress(AssertionError):
            await eventually(all_scored, timeout=30, interval=0.2)
        watcher.cancel()
        reader.cancel()
        metrics = {name: httpx.AsyncClient(base_url=url, timeout=30) for name, url in services.items()}
        try:
            await observe(soak, metrics, processes)
        finally:
            for client in metrics.values():
                await client.aclose()
        print(report_line(soak.current), flush=True)
    return soak


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=1000.0, help="captures per second, open loop")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--window", type=float, default=60.0, help="seconds per report line")
    p.add_argument("--connections", type=int, default=64, help="HTTP connections to each leads process")
    p.add_argument("--leads-processes", type=int, default=2)
    p.add_argument("--chart", type=Path, default=Path("docs/soak.png"))
    return p


def main() -> None:
    args = parser().parse_args()
    with embedded_stack() as stack:
        servers = {
            "postgres": psutil.Process(stack.postgres.pid),
            "broker": psutil.Process(stack.broker.pid),
        }
        with (
            service_processes(stack.settings, "leads", args.leads_processes) as leads_urls,
            service_processes(stack.settings, "scoring", 1) as (scoring_url,),
        ):
            soak = asyncio.run(run(stack.settings, leads_urls, scoring_url, args, servers))
    sent = sum(w.sent for w in soak.windows)
    answered = sum(w.answered for w in soak.windows)
    elapsed_s = args.minutes * 60
    print(
        f"\nsent {sent:,} captures ({sent / elapsed_s:,.0f}/s asked {args.rate:,.0f}/s), {answered:,} answered 201, "
        f"{len(soak.scored):,} scored; all latencies: "
        + "  ".join(f"{k} {v:.1f} ms" for k, v in percentiles([x for w in soak.windows for x in w.latencies_s]).items())
    )
    if soak.failures:
        print("failed captures by error: " + ", ".join(f"{name} {n:,}" for name, n in soak.failures.items()))
    print("trends over the second half (least-squares slope):")
    for name, slope in trends(soak.windows).items():
        print(f"  {name:28} {slope:+10.2f}")
    chart(soak.windows, args.chart, args.rate)
    print(f"chart: {args.chart}")


if __name__ == "__main__":
    main()
