"""Span export to a real OTLP/HTTP receiver on loopback when OTEL_EXPORTER_OTLP_ENDPOINT is set: the
request's span continues the caller's trace, and its ids are the ones the published event and the
consuming handler carry on. Without the variable nothing is exported, and the SDK is not even imported."""

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from services.leads.main import service
from shared import tracing
from shared.auth import issue_token
from shared.context import current_cause, trace_id_of
from shared.db import Database, Transaction
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent, parse
from shared.inbox import DeadLetters, EventProcessor, Message, Outcome
from shared.org import Role
from shared.service import create_service_app
from shared.settings import Settings
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


class Receiver:
    """An OTLP/HTTP trace receiver: decodes every export request it gets."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            receiver.spans.append({
                                "path": self.path, "service": resource.get("service.name"), "name": span.name,
                                "kind": span.kind, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "attributes": {a.key: a.value for a in span.attributes},
                            })
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    thread = threading.Thread(target=running.server.serve_forever, daemon=True)
    thread.start()
    yield running
    running.server.shutdown()


async def test_spans_are_exported_and_their_ids_travel_with_the_events(
    receiver: Receiver, settings: Settings, db: Database, producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    caller_trace, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    app = create_service_app(service, settings)
    async with app.router.lifespan_context(app):
        assert tracing.enabled()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            token = issue_token("rep-1", Role.REP, settings.signing_secret, 600)
            created = await http.post(
                "/v1/leads",
                json={"contact": {"name": "追踪", "email": f"t.{uuid.uuid4().hex[:10]}@example.cn"}, "source": "api"},
                headers={"Authorization": f"Bearer {token}", "traceparent": f"00-{caller_trace}-{caller_span}-01"},
            )
        assert created.status_code == 201, created.text
        answered = created.headers["traceparent"]
        assert trace_id_of(answered) == caller_trace
        request_span = answered.split("-")[2]
        pool = await asyncpg.connect(settings.database_url_for("leads"))
        try:
            payload = await pool.fetchval(
                "SELECT payload FROM outbox WHERE aggregateid = $1 AND type = 'sales.lead.captured.v1'",
                created.json()["id"],
            )
        finally:
            await pool.close()
        captured = parse(payload)
        assert captured.traceparent == answered  # the event carries the request span's context

        # A consumer applying that event: its span is a child of the request's, and what its handler
        # publishes carries the consumer span's context.
        seen: list[str] = []

        async def handler(tx: Transaction, event: CloudEvent) -> None:
            cause = current_cause.get()
            assert cause is not None and cause.traceparent is not None
            seen.append(cause.traceparent)

        group = f"trace-test-{uuid.uuid4().hex[:6]}"
        processor = EventProcessor(db, group, {"sales.lead.captured.v1": handler}, DeadLetters(producer, group))
        message = Message("sales.leads", 0, 0, captured.subject.encode(), captured.to_bytes(), (CONTENT_TYPE_HEADER,))
        assert await processor.process(message) is Outcome.APPLIED
        [consumer_context] = seen
        assert trace_id_of(consumer_context) == caller_trace
        assert tracing.flush()

        async def exported() -> list[dict[str, Any]] | None:
            spans = [s for s in receiver.spans if s["trace_id"] == caller_trace]
            return spans if len(spans) >= 2 else None

        spans = await eventually(exported, timeout=10)
    server = next(s for s in spans if s["kind"] == 2)  # SPAN_KIND_SERVER
    assert server["name"] == "POST /v1/leads" and server["path"] == "/v1/traces"
    assert server["service"] == "funnelcast-leads"
    assert (server["span_id"], server["parent_span_id"]) == (request_span, caller_span)
    assert server["attributes"]["http.response.status_code"].int_value == 201
    consumer = next(s for s in spans if s["kind"] == 5)  # SPAN_KIND_CONSUMER
    assert consumer["name"] == "sales.lead.captured.v1 process"
    assert consumer["parent_span_id"] == request_span
    assert consumer["span_id"] == consumer_context.split("-")[2]
    assert consumer["attributes"]["messaging.consumer.group.name"].string_value == group
    assert not tracing.enabled()  # the service's stop flushed and shut the exporter down


def test_without_an_endpoint_nothing_is_exported_and_the_trace_still_flows() -> None:
    assert tracing.configure_tracing("leads", environ={}) is False
    assert not tracing.enabled()
    parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    span = tracing.start_span("GET", parent, "server")
    assert type(span) is tracing.Span
    assert trace_id_of(span.traceparent) == trace_id_of(parent) and span.traceparent != parent
    span.end(error="ignored")
    assert trace_id_of(tracing.start_span("GET", None, "server").traceparent) is not None


# A leads service app started (migrations, relay, consumers) that answers a capture; then the names of the
# OpenTelemetry modules the process has imported.
_START_A_SERVICE = """
import asyncio, sys
import httpx
from services.leads.main import service
from shared.auth import issue_token
from shared.org import Role
from shared.service import create_service_app
from shared.settings import Settings

async def main():
    settings = Settings()
    app = create_service_app(service, settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            token = issue_token("rep-1", Role.REP, settings.signing_secret, 600)
            created = await http.post("/v1/leads", headers={"Authorization": f"Bearer {token}"}, json={
                "contact": {"name": "Import check", "email": sys.argv[1]}, "source": "api"})
            assert created.status_code == 201, created.text
        print(" ".join(sorted(name for name in sys.modules if name.startswith("opentelemetry"))))

asyncio.run(main())
"""


def _otel_modules_of_a_started_service(settings: Settings, otel: dict[str, str]) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUNNELCAST_", "OTEL_"))}
    env.update({"FUNNELCAST_DATABASE_URL": settings.database_url or "", "FUNNELCAST_HOME": str(settings.home),
                "FUNNELCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
                "FUNNELCAST_KAFKA_IDEMPOTENCE": "false", **otel})  # Tansu does not implement InitProducerId
    email = f"otel.{uuid.uuid4().hex[:10]}@example.cn"
    result = subprocess.run([sys.executable, "-c", _START_A_SERVICE, email], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(result.stdout.split())


def test_without_an_endpoint_a_started_service_never_imports_the_sdk(receiver: Receiver, settings: Settings) -> None:
    without = _otel_modules_of_a_started_service(settings, {})
    assert not {name for name in without if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))}, without
    # the same process with an endpoint does import it: the check above can fail
    exporting = _otel_modules_of_a_started_service(settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
    assert {"opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"} <= exporting
