"""docs/asyncapi.yaml and docs/events.md are the registry's, and the AsyncAPI parser accepts the document."""

import dataclasses
import json
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from shared.events import dead_letter_headers as dlq_header
from shared.events.asyncapi import render, render_catalogue
from shared.events.catalog import EVENT_TYPES
from shared.events.envelope import CloudEvent
from shared.runtime.dlq import DeadLetter
from shared.topology import TOPICS
from tests.support.events import lead_captured

ROOT = Path(__file__).parents[2]
DOCUMENT = ROOT / "docs" / "asyncapi.yaml"
CATALOGUE = ROOT / "docs" / "events.md"
TOOLING = ROOT / "docs" / "tooling"


def test_the_committed_document_is_what_the_registry_generates() -> None:
    stale = "is stale: run `.venv/bin/funnelcast asyncapi` after changing the event registry"
    assert DOCUMENT.read_text(encoding="utf-8") == render(), f"docs/asyncapi.yaml {stale}"
    assert CATALOGUE.read_text(encoding="utf-8") == render_catalogue(), f"docs/events.md {stale}"


def test_every_event_type_is_a_message_on_its_topic_with_its_schema() -> None:
    doc = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    assert doc["asyncapi"].startswith("3.")
    on_channels = {
        (ref["$ref"].rsplit("/", 1)[1], channel["address"])
        for channel in doc["channels"].values()
        for ref in channel["messages"].values()
        if not channel["address"].endswith(".dlq")
    }
    assert on_channels == {(e.type, e.topic) for e in EVENT_TYPES.values()}
    for event in EVENT_TYPES.values():
        message = doc["components"]["messages"][event.type]
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
        assert message["headers"] == {"$ref": "#/components/schemas/KafkaHeaders"}
        data_ref = message["payload"]["allOf"][1]["properties"]["data"]["$ref"]
        embedded = doc["components"]["schemas"][data_ref.rsplit("/", 1)[1]]
        original = event.schema()
        assert embedded["required"] == original.get("required", [])
        assert set(embedded["properties"]) == set(original["properties"])
        assert set(embedded.get("$defs", {})) == set(original.get("$defs", {}))
    receivers = {(op["channel"]["$ref"].rsplit("/", 1)[1], name.rsplit(".", 1)[1])
                 for name, op in doc["operations"].items() if op["action"] == "receive"}
    assert receivers == {(t.name, c) for t in TOPICS.values() for c in t.consumers
                         if any(e.topic == t.name for e in EVENT_TYPES.values())}
    for channel in doc["channels"].values():
        topic = channel["address"].removesuffix(".dlq")
        assert channel["bindings"]["kafka"]["partitions"] == TOPICS[topic].partitions


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))["components"]["schemas"]
    return schemas


def _errors(schema: dict[str, Any], instance: Any) -> list[str]:
    validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
    return [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(instance)]


def test_a_published_cloud_event_is_a_valid_envelope_and_the_envelope_lists_exactly_its_attributes() -> None:
    lead_id = str(uuid.uuid4())
    every_attribute = CloudEvent(
        type="sales.lead.captured.v1", source="/funnelcast/leads", subject=lead_id, data=lead_captured(lead_id),
        sequence=1, correlationid=str(uuid.uuid4()), causationid=str(uuid.uuid4()),
        traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
    )
    unset = [f.name for f in dataclasses.fields(CloudEvent) if getattr(every_attribute, f.name) is None]
    assert not unset, f"set every extension here too: {unset}"
    on_the_wire = json.loads(every_attribute.to_bytes())  # what the outbox relay publishes
    envelope = _schemas()["CloudEventEnvelope"]
    assert not _errors(envelope, on_the_wire)
    assert set(envelope["properties"]) == set(on_the_wire), "an attribute undescribed, or described but never sent"
    without_extensions = CloudEvent(type=every_attribute.type, source=every_attribute.source, subject=lead_id,
                                    data=every_attribute.data)
    assert set(envelope["required"]) == set(without_extensions.to_dict())
    # and as its type's message, whose payload pins type, source, dataschema and the data schema
    payload = {**yaml.safe_load(DOCUMENT.read_text(encoding="utf-8")),
               "$ref": f"#/components/messages/{every_attribute.type}/payload"}
    assert not _errors(payload, on_the_wire)
    assert _errors(payload, {**on_the_wire, "source": "/funnelcast/scoring"})
    assert _errors(envelope, {**on_the_wire, "traceparent": "not-a-trace"})


def test_the_dead_letter_headers_are_those_written_and_read() -> None:
    failed_at = datetime(2026, 12, 3, 19, 30, tzinfo=UTC)
    written = dlq_header.failure_headers("ValueError: no", "funnelcast-scoring", "sales.leads", 4, 42, failed_at)
    documented = _schemas()["DeadLetterHeaders"]
    assert [name for name, _ in written] == documented["required"] == list(documented["properties"])
    letter = DeadLetter("sales.leads.dlq", 0, 7, b"lead-1", b"{}", tuple(written), replayed=False)
    details = letter.details()
    assert (details["error"], details["group"], details["failed_at"]) == (
        "ValueError: no", "funnelcast-scoring", failed_at.isoformat())
    assert details["original"] == {"topic": "sales.leads", "partition": "4", "offset": "42"}
    replayed = _schemas()["KafkaHeaders"]["properties"][dlq_header.REPLAYED_FROM.name]
    assert replayed["description"] == dlq_header.REPLAYED_FROM.description


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the AsyncAPI parser (npm @asyncapi/parser) cannot run")
    assert (TOOLING / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        "docs/tooling has no node_modules: `make install` runs `npm ci --prefix docs/tooling`"
    )
    return subprocess.run(
        [node, str(TOOLING / "validate-asyncapi.mjs"), str(path)], capture_output=True, text=True, timeout=120
    )


def test_the_asyncapi_parser_accepts_the_document() -> None:
    result = _validate(DOCUMENT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(EVENT_TYPES) + 1} messages" in result.stdout  # every type, and the dead letter


def test_the_asyncapi_parser_rejects_a_dangling_schema_reference(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = render().replace("/$defs/id'", "/$defs/no_such_definition'", 1)
    assert text != render()
    broken.write_text(text, encoding="utf-8")
    result = _validate(broken)
    assert result.returncode == 1 and "no_such_definition" in result.stdout
