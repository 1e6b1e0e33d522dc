"""A non-Python subscriber (kcat, on librdkafka) reads our events, and they are valid CloudEvents.

Debian bookworm's kcat 1.7.1 is built on librdkafka 2.0.2, which cannot parse the ApiVersions v3
response of Tansu 0.6.0 (the embedded broker the tests use): it stops with a read buffer underflow
and never gets metadata. The same kcat works against Apache Kafka. That one known failure skips
this test, with the reason; any other kcat failure fails it. test_node_subscriber.py covers a
non-Python client (KafkaJS) against Tansu.
"""

import asyncio
import json
import re
import shutil
import subprocess

import pytest

from shared.events.envelope import parse_and_validate
from shared.settings import Settings
from tests.support.published import CONTRACTS_TOPIC, publish_signed_contract

pytestmark = pytest.mark.skipif(
    shutil.which("kcat") is None, reason="kcat not installed (Debian package kcat; .ci/run installs it)"
)

APIVERSION_UNDERFLOW = re.compile(r"Protocol read buffer underflow for ApiVersion v\d+")


def librdkafka_version() -> str:
    """The librdkafka version kcat was built with, from `kcat -V`."""
    banner = subprocess.run(["kcat", "-V"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"librdkafka (\S+)", banner)
    return found.group(1) if found else "(version unknown)"


async def test_kcat_reads_a_valid_cloudevent(scratch_db: str, settings: Settings) -> None:
    sent = await publish_signed_contract(scratch_db, settings)
    contract = sent.subject

    # `-d protocol` only adds diagnostics on stderr; it tells the known broker incompatibility apart.
    kcat = await asyncio.create_subprocess_exec(
        "kcat", "-C", "-b", settings.kafka_bootstrap_servers, "-t", CONTRACTS_TOPIC,
        "-o", "beginning", "-e", "-q", "-d", "protocol", "-f", "%k\t%h\t%s\n",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        stdout, stderr = await asyncio.wait_for(kcat.communicate(), timeout=30)
    except TimeoutError:
        kcat.kill()
        await kcat.wait()
        pytest.fail("kcat did not finish reading sales.contracts within 30 s")
    errors = stderr.decode(errors="replace")
    if kcat.returncode != 0 and APIVERSION_UNDERFLOW.search(errors):
        pytest.skip(
            f"kcat's librdkafka {librdkafka_version()} cannot parse Tansu's ApiVersions v3 response (read underflow); "
            "kcat works against Apache Kafka; the Node subscriber test covers a non-Python client here"
        )
    assert kcat.returncode == 0, errors[-4000:]
    lines = [line for line in stdout.decode().splitlines() if line.startswith(contract + "\t")]
    assert len(lines) == 1, stdout.decode()
    _, headers, value = lines[0].split("\t", 2)
    assert "content-type=application/cloudevents+json" in headers
    event = parse_and_validate(value)
    assert event.id == sent.id and event.type == "sales.contract.signed.v1"
    assert json.loads(value)["data"]["amount"] == "880000.00"
