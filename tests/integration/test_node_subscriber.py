"""A non-Python subscriber (Node.js on KafkaJS, examples/subscriber-node) reads our events, and they are
valid CloudEvents with the structured-mode content-type header."""

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from shared.events.envelope import parse_and_validate
from shared.settings import Settings
from tests.support.published import CONTRACTS_TOPIC, publish_signed_contract

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "subscriber-node"
DEADLINE_S = 60.0

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node not installed (Node.js 18+ runs the example)"),
    pytest.mark.skipif(
        not (EXAMPLE / "node_modules" / "kafkajs").is_dir(),
        reason="examples/subscriber-node/node_modules is absent: run `make install` (needs npm)",
    ),
]


async def read_until_key(process: asyncio.subprocess.Process, key: str, deadline: float) -> dict[str, Any] | None:
    """The subscriber's JSON line for `key`, or None when its output ended first."""
    assert process.stdout is not None
    while True:
        raw = await asyncio.wait_for(process.stdout.readline(), timeout=max(0.0, deadline - time.monotonic()))
        if not raw:
            return None
        line: dict[str, Any] = json.loads(raw)
        if line["key"] == key:
            return line


async def test_node_subscriber_reads_a_valid_cloudevent(scratch_db: str, settings: Settings) -> None:
    sent = await publish_signed_contract(scratch_db, settings)
    contract = sent.subject

    deadline = time.monotonic() + DEADLINE_S
    node = await asyncio.create_subprocess_exec(
        "node", str(EXAMPLE / "subscriber.js"), "--bootstrap", settings.kafka_bootstrap_servers,
        "--topic", CONTRACTS_TOPIC, "--timeout", str(int(DEADLINE_S)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = await read_until_key(node, contract, deadline)
    except TimeoutError:
        line = None
    finally:
        if node.returncode is None:
            node.terminate()  # the subscriber leaves its group and exits 0 on SIGTERM
        try:
            _, stderr = await asyncio.wait_for(node.communicate(), timeout=10)
        except TimeoutError:
            node.kill()
            _, stderr = await node.communicate()
    assert line is not None, (
        f"the Node subscriber printed no message with key {contract!r} within {DEADLINE_S:.0f} s "
        f"(exit status {node.returncode})\n{stderr.decode(errors='replace')[-4000:]}"
    )
    assert line["topic"] == CONTRACTS_TOPIC
    assert line["headers"].get("content-type") == "application/cloudevents+json", line["headers"]
    event = parse_and_validate(line["value"])
    assert event.id == sent.id and event.type == "sales.contract.signed.v1" and event.subject == contract
    assert json.loads(line["value"])["data"]["amount"] == "880000.00"
