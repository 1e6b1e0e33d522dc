"""A Funnelcast subscriber, as another system (ERP, finance, marketing) would write one.

It joins a consumer group, parses each message as a structured-mode CloudEvent, checks its
`data` against the JSON Schema of its type, and handles each event id once: the ids it handled
are kept in a SQLite file, written in the same transaction as the effect, so a redelivery or a
replay of events it already has changes nothing. Offsets are committed after the effect.
Here the effect is printing one JSON line per new event; put your own in `handle`.

    python examples/subscriber/subscriber.py --bootstrap 127.0.0.1:9092 --group erp \
        --topic sales.contracts --topic sales.opportunities --state erp.sqlite

Needs aiokafka and jsonschema (`pip install aiokafka jsonschema`); nothing from Funnelcast's code.
"""

import argparse
import asyncio
import json
import signal
import sqlite3
import sys
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from jsonschema.protocols import Validator

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "events" / "schemas"
REQUIRED = ("specversion", "id", "source", "type", "subject", "time", "data")


class Rejected(ValueError):
    """A message that is not a valid Funnelcast event: logged and skipped, never handled."""


@cache
def validator(schemas: Path, type_: str) -> Validator:
    path = schemas / f"{type_}.json"
    if not path.exists():
        raise Rejected(f"unknown event type {type_!r} (no schema {path.name})")
    schema = json.loads(path.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def parse(value: bytes | None, schemas: Path) -> dict[str, Any]:
    """A CloudEvent 1.0 (structured JSON mode) whose data matches its type's schema."""
    try:
        event = json.loads(value or b"")
    except ValueError as exc:
        raise Rejected(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise Rejected("not a JSON object")
    missing = [name for name in REQUIRED if name not in event]
    if missing:
        raise Rejected(f"missing CloudEvent attributes {missing}")
    if event["specversion"] != "1.0":
        raise Rejected(f"specversion {event['specversion']!r}")
    try:
        datetime.fromisoformat(event["time"])
    except (TypeError, ValueError):
        raise Rejected(f"time {event['time']!r} is not RFC 3339") from None
    errors = sorted(validator(schemas, event["type"]).iter_errors(event["data"]), key=str)
    if errors:
        raise Rejected(f"{event['type']} data does not match its schema: {errors[0].message}")
    return event


class Seen:
    """Event ids already handled, with the effect, in one SQLite transaction."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS handled (event_id TEXT PRIMARY KEY, type TEXT, at TEXT)")
        self.db.commit()

    def handle_once(self, event: dict[str, Any], record: ConsumerRecord[bytes, bytes]) -> bool:
        with self.db:  # one transaction: the id is recorded only if the effect succeeded
            cursor = self.db.execute(
                "INSERT INTO handled VALUES (?, ?, datetime('now')) ON CONFLICT DO NOTHING",
                (event["id"], event["type"]),
            )
            if cursor.rowcount == 0:
                return False
            handle(event, record)
        return True


def handle(event: dict[str, Any], record: ConsumerRecord[bytes, bytes]) -> None:
    """The effect. Replace with yours (write to the ERP, call finance ...)."""
    line = {
        "id": event["id"], "type": event["type"], "subject": event["subject"], "sequence": event.get("sequence"),
        "time": event["time"], "traceparent": event.get("traceparent"), "topic": record.topic,
        "partition": record.partition, "offset": record.offset, "data": event["data"],
    }
    print(json.dumps(line, ensure_ascii=False), flush=True)


async def run(args: argparse.Namespace) -> dict[str, int]:
    consumer = AIOKafkaConsumer(
        *args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a new group starts from the oldest event the broker keeps
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=max(100, args.session_timeout_ms // 6),
        fetch_max_wait_ms=args.fetch_max_wait_ms,
    )
    seen = Seen(args.state)
    counts = {"handled": 0, "duplicates": 0, "rejected": 0}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await consumer.start()
    try:
        idle_since = loop.time()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            for records in batches.values():
                for record in records:
                    try:
                        event = parse(record.value, args.schemas)
                    except Rejected as exc:
                        counts["rejected"] += 1
                        print(f"rejected {record.topic}[{record.partition}]@{record.offset}: {exc}", file=sys.stderr)
                        continue
                    counts["handled" if seen.handle_once(event, record) else "duplicates"] += 1
            if batches:
                await consumer.commit()  # after the effects: a crash before this only means redelivery
                idle_since = loop.time()
            seen_total = counts["handled"] + counts["duplicates"]
            if args.max_events is not None and seen_total >= args.max_events:
                break
            if args.idle_exit_s is not None and loop.time() - idle_since > args.idle_exit_s:
                break
    finally:
        await consumer.stop()
        seen.db.close()
    print(json.dumps({"summary": counts}), file=sys.stderr, flush=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--group", required=True, help="consumer group: instances of one subscriber share it")
    parser.add_argument("--topic", action="append", required=True, help="a topic to read (repeatable)")
    parser.add_argument("--state", default="subscriber.sqlite", help="SQLite file of the event ids handled")
    parser.add_argument("--schemas", type=Path, default=SCHEMAS, help="directory of <type>.json data schemas")
    parser.add_argument("--session-timeout-ms", type=int, default=10_000)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=100)
    parser.add_argument("--max-events", type=int, help="stop after this many events (handled or duplicate)")
    parser.add_argument("--idle-exit-s", type=float, help="stop after this long without a message")
    counts = asyncio.run(run(parser.parse_args(argv)))
    return 1 if counts["rejected"] else 0


if __name__ == "__main__":
    sys.exit(main())
