"""docs/asyncapi.yaml and docs/events.md are the registry's, and the AsyncAPI parser accepts the document."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.events.asyncapi import render, render_catalogue
from shared.events.catalog import EVENT_TYPES
from shared.topology import TOPICS

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
