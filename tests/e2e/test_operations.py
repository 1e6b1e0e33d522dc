"""The running embedded stack as an operator sees it: `funnelcast status` with lag, backlog and the dead
letters waiting per service, every metric the alert rules and dashboards use served by some service, and
one trace id from a lead's requests through scoring, conversion, the forecast, the notification pushed to
the lead's rep, webhook deliveries (their `traceparent` headers) and the services' log lines."""

import asyncio
import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiokafka import TopicPartition
from websockets.sync.client import ClientConnection, connect

from shared import kafka
from shared.auth import issue_token
from shared.context import trace_id_of
from shared.org import Role
from shared.settings import Settings
from shared.topology import PROCESSES, TOPICS
from tests.e2e.test_cli_up_down import funnelcast, service_ports, stack_env, up_detached  # noqa: F401 - fixture
from tests.support.metric_names import metrics_used

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
_TYPE = re.compile(r"^# TYPE (\S+) (\w+)$", re.M)


def used_by_rules_and_dashboards() -> set[str]:
    used: set[str] = set()
    for path in (ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            used |= {m for rule in group["rules"] for m in metrics_used(rule["expr"])}
    for path in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            used |= {m for target in panel["targets"] for m in metrics_used(target["expr"])}
    return used


class WebhookReceiver:
    """A subscriber's webhook endpoint on loopback: keeps every delivered CloudEvent with the POST's
    `traceparent` header. It answers the first attempt of each event 503, so every delivery is retried."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []  # accepted (204)
        self.attempts: list[tuple[str | None, dict[str, Any]]] = []  # every POST: (traceparent header, event)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                event = json.loads(self.rfile.read(int(self.headers["content-length"])))
                retried = any(seen["id"] == event["id"] for _, seen in receiver.attempts)
                receiver.attempts.append((self.headers["traceparent"], event))
                if retried:
                    receiver.events.append(event)
                self.send_response(204 if retried else 503)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/funnelcast"


async def events_of_trace(settings: Settings, topics: list[str], trace_id: str) -> list[dict[str, Any]]:
    """Every event on `topics` (from the beginning) whose traceparent is in the trace."""
    consumer = kafka.consumer(settings, group_id=None)
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        await consumer.topics()
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                break
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    with contextlib.suppress(ValueError):  # the test's poison message
                        event = json.loads(record.value)
                        if trace_id_of(event.get("traceparent")) == trace_id:
                            found.append(event)
    finally:
        await consumer.stop()
    return found


def follow_one_trace(env: dict[str, str], ports: dict[str, int]) -> tuple[str, str]:
    """A lead of rep-1's journey under one client trace: capture, touch, qualify, convert; the trace id and
    the lead's id."""
    secret = Settings().signing_secret
    trace_id = uuid.uuid4().hex
    rep = {"Authorization": f"Bearer {issue_token('rep-1', Role.REP, secret, 600)}",
           "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
    leads = f"http://127.0.0.1:{ports['leads']}/v1/leads"
    captured = httpx.post(leads, headers=rep, timeout=30, json={
        "contact": {"name": "一条线", "email": f"trace.{uuid.uuid4().hex[:10]}@example.cn"},
        "source": "web_form", "grade": "H", "region": "华东", "owner_id": "rep-1"})
    assert captured.status_code == 201, captured.text
    lead = captured.json()["id"]
    for path, body in (("touches", {"channel": "phone"}), ("qualify", {"note": "预算已落实"}),
                       ("convert", {"opportunity": {"name": "一条线 CRM", "amount": "380000.00",
                                                    "expected_close_date": "2027-01-31"}})):
        answer = httpx.post(f"{leads}/{lead}/{path}", headers=rep, json=body, timeout=30)
        assert answer.status_code in (200, 201), f"{path}: {answer.text}"
    return trace_id, lead


@contextlib.contextmanager
def push_stream(port: int, user: str) -> Iterator[ClientConnection]:
    """The user's push stream on the notifications service, once it said it is ready."""
    token = issue_token(user, Role.REP, Settings().signing_secret, 600)
    with connect(f"ws://127.0.0.1:{port}/v1/stream?token={token}") as socket:
        ready = json.loads(socket.recv(timeout=30))
        assert ready["type"] == "ready" and ready["user_id"] == user, ready
        yield socket


def pushed_about(socket: ClientConnection, subject: str, event_type: str, timeout: float) -> dict[str, Any]:
    """The first notification pushed on the socket about `subject` caused by an `event_type` event."""
    deadline = time.monotonic() + timeout
    while True:
        message: dict[str, Any] = json.loads(socket.recv(timeout=max(0.1, deadline - time.monotonic())))
        if message.get("subject") == subject and message.get("event_type") == event_type:
            return message


def log_lines(path: str) -> list[dict[str, Any]]:
    """A service's JSON log lines (its log file also holds the output of libraries that print)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return [line for line in lines if isinstance(line, dict)]


def dead_letters_waiting(env: dict[str, str]) -> dict[str, int | None]:
    status = funnelcast("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    return {s["label"]: s["dead_letters"] for s in json.loads(status.stdout)["services"]}


def test_status_figures_and_the_metrics_every_rule_and_dashboard_needs(stack_env: dict[str, str]) -> None:  # noqa: F811
    stack_env["FUNNELCAST_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.0/8"  # the test's webhook receiver
    stack_env["FUNNELCAST_NOTIFICATIONS_WEBHOOK_RETRY_BASE_S"] = "0.2"  # the receiver's 503s are retried soon
    up_detached(stack_env)
    ports = service_ports(stack_env)

    served: set[str] = set()
    for name, port in ports.items():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert re.search(r"^funnelcast_ready 1\.0$", text, re.M), f"{name} is not ready by its own metric"
        for metric, kind in _TYPE.findall(text):
            served.add(metric)
            served.update(metric + suffix for suffix in {"histogram": ("_bucket", "_sum", "_count")}.get(kind, ()))
    missing = used_by_rules_and_dashboards() - served
    assert not missing, f"rules or dashboards use metrics no running service serves: {sorted(missing)}"

    status = funnelcast("status", "--json", env=stack_env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert {s["name"] for s in report["services"]} == set(PROCESSES)
    consumers = {name for topic in TOPICS.values() for name in topic.consumers}
    for service in report["services"]:
        figures = (service["consumer_lag"], service["outbox_backlog"])
        assert all(isinstance(f, int) and f >= 0 for f in figures), service
        assert service["dead_letters"] == (0 if service["name"] in consumers else None), service
    table = funnelcast("status", env=stack_env)
    assert "LAG" in table.stdout and "BACKLOG" in table.stdout and "DEAD LETTERS WAITING" in table.stdout

    # A poison message on sales.leads: each service consuming it dead-letters it, and status counts the
    # letters waiting in the dead-letter topic (not a per-process counter that a restart resets).
    broker = Settings(embedded_kafka_port=int(stack_env["FUNNELCAST_EMBEDDED_KAFKA_PORT"]))

    async def send_poison() -> None:
        producer = kafka.producer(broker, enable_idempotence=False)
        await producer.start()
        try:
            await producer.send_and_wait("sales.leads", b"{not json", key=b"poison")
        finally:
            await producer.stop()

    asyncio.run(send_poison())
    expected = {name: (1 if name in TOPICS["sales.leads"].consumers else 0) if name in consumers else None
                for name in PROCESSES}
    deadline = time.monotonic() + 30
    while (waiting := dead_letters_waiting(stack_env)) != expected:
        assert time.monotonic() < deadline, f"dead letters waiting: {waiting}, expected {expected}"
        time.sleep(0.5)

    # One trace: the lead's requests, the score, the opportunity the conversion opened, the forecast
    # update, the notification pushed to the lead's rep (its H-grade rule) and the webhook deliveries
    # of the score and the forecast all carry its id.
    receiver = WebhookReceiver()
    erp = {"Authorization": f"Bearer {issue_token('svc-erp', Role.INTEGRATION, Settings().signing_secret, 600)}"}
    subscribed = httpx.post(f"http://127.0.0.1:{ports['notifications']}/v1/webhooks", headers=erp, timeout=30,
                            json={"url": receiver.url,
                                  "event_types": ["sales.lead.scored.v1", "sales.forecast.updated.v1"]})
    assert subscribed.status_code == 201, subscribed.text
    with push_stream(ports["notifications"], "rep-1") as rep_stream:
        trace_id, lead = follow_one_trace(stack_env, ports)
        pushed = pushed_about(rep_stream, lead, "sales.lead.assigned.v1", timeout=60)
    assert pushed["rule_id"] == "h-lead-assigned", pushed
    assert trace_id_of(pushed.get("traceparent")) == trace_id, pushed
    topics = ["sales.leads", "sales.scores", "sales.opportunities", "sales.forecasts"]
    wanted = {"sales.lead.captured.v1", "sales.lead.converted.v1", "sales.lead.scored.v1",
              "sales.opportunity.created.v1", "sales.forecast.updated.v1"}
    deadline = time.monotonic() + 90
    while True:
        types = {e["type"] for e in asyncio.run(events_of_trace(broker, topics, trace_id))}
        delivered = {e["type"] for e in receiver.events if trace_id_of(e.get("traceparent")) == trace_id}
        if wanted <= types and {"sales.lead.scored.v1", "sales.forecast.updated.v1"} <= delivered:
            break
        assert time.monotonic() < deadline, f"trace {trace_id}: events {sorted(types)}, webhooks {sorted(delivered)}"
        time.sleep(1)
    receiver.server.shutdown()
    # Each attempt is a span of its own in the event's trace, sent as the POST's traceparent header.
    traced_attempts = [(header, event) for header, event in receiver.attempts
                       if trace_id_of(event.get("traceparent")) == trace_id]
    assert len(traced_attempts) >= 4, traced_attempts  # two deliveries, each failed once and retried
    assert all(trace_id_of(header) == trace_id for header, _ in traced_attempts), traced_attempts
    headers = [header for header, _ in traced_attempts]
    assert len(set(headers)) == len(headers), "each attempt has a span id of its own"

    # The log lines of the trace's requests and of the work they caused carry its trace id: a replay asked
    # under the trace (leads: the request and its background run) and the failed webhook attempts (the
    # notifications delivery worker).
    replayed = httpx.post(f"http://127.0.0.1:{ports['leads']}/v1/replays", timeout=30, headers={
        **erp, "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}, json={
        "since": (datetime.now(UTC) - timedelta(minutes=10)).isoformat(), "target_topic": "erp.traced"})
    assert replayed.status_code == 202, replayed.text
    logs = {s["name"]: s["log"] for s in report["services"]}
    deadline = time.monotonic() + 30
    while True:
        traced = {name: [line["message"] for line in log_lines(path) if line.get("trace_id") == trace_id]
                  for name, path in logs.items()}
        replay_lines = [m for m in traced["leads"] if replayed.json()["id"] in m]
        retry_lines = [m for m in traced["notifications-worker"] if re.search(r"attempt 1 failed: HTTP 503", m)]
        if len(replay_lines) == 2 and len(retry_lines) >= 2:
            break
        assert time.monotonic() < deadline, f"log lines of trace {trace_id}: {traced}"
        time.sleep(0.5)

    down = funnelcast("down", env=stack_env)
    assert down.returncode == 0, down.stderr
