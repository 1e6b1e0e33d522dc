"""CloudEvents 1.0 in structured JSON mode, as Funnelcast puts them on Kafka.

A small mapper rather than the `cloudevents` SDK: its Kafka conversion has had quirks
with partition keys and content-type (DESIGN.md section 6), and this is all we need.
"""

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import jsonschema_rs

from shared.events.catalog import UnknownEventType, event_type

CONTENT_TYPE = "application/cloudevents+json"
CONTENT_TYPE_HEADER = ("content-type", CONTENT_TYPE.encode())
SPECVERSION = "1.0"
_REQUIRED = ("specversion", "id", "source", "type", "subject", "time", "data")


class InvalidEvent(ValueError):
    """A message that is not a valid Funnelcast CloudEvent (bad JSON, envelope or data)."""


@dataclass(frozen=True)
class CloudEvent:
    type: str
    source: str
    subject: str
    data: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    sequence: int | None = None
    correlationid: str | None = None
    causationid: str | None = None
    traceparent: str | None = None

    @property
    def topic(self) -> str:
        return event_type(self.type).topic

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "dataschema": event_type(self.type).dataschema,
        }
        for name in ("sequence", "correlationid", "causationid", "traceparent"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        body["data"] = self.data
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), default=_json_default)

    def to_bytes(self) -> bytes:
        return self.to_json().encode()


def _json_default(value: Any) -> Any:
    # Amounts are decimal strings and times RFC 3339 on the wire (CONTRACT.md).
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def parse(raw: bytes | str) -> CloudEvent:
    """Decode and check a structured-mode CloudEvent; raises InvalidEvent."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidEvent("a CloudEvent is a JSON object")
    missing = [name for name in _REQUIRED if name not in body]
    if missing:
        raise InvalidEvent(f"missing CloudEvent attributes: {', '.join(missing)}")
    if body["specversion"] != SPECVERSION:
        raise InvalidEvent(f"unsupported specversion {body['specversion']!r}")
    if not isinstance(body["data"], dict):
        raise InvalidEvent("data must be a JSON object")
    try:
        time = datetime.fromisoformat(body["time"])
    except (TypeError, ValueError):
        raise InvalidEvent(f"time is not RFC 3339: {body['time']!r}") from None
    if time.tzinfo is None:
        raise InvalidEvent(f"time has no UTC offset, as RFC 3339 requires: {body['time']!r}")
    sequence = body.get("sequence")
    if sequence is not None and (isinstance(sequence, bool) or not isinstance(sequence, int)):
        raise InvalidEvent("sequence must be an integer")
    return CloudEvent(
        type=str(body["type"]),
        source=str(body["source"]),
        subject=str(body["subject"]),
        data=body["data"],
        id=str(body["id"]),
        time=time,
        sequence=sequence,
        correlationid=body.get("correlationid"),
        causationid=body.get("causationid"),
        traceparent=body.get("traceparent"),
    )


def validate(event: CloudEvent) -> None:
    """Check the event's data against the JSON Schema of its type and version."""
    try:
        validator = _validator(event.type)
    except UnknownEventType as exc:
        raise InvalidEvent(str(exc)) from None
    if validator.is_valid(event.data):
        return
    errors = sorted(validator.iter_errors(event.data), key=lambda e: list(e.instance_path))
    if errors:
        details = "; ".join(f"{'/'.join(map(str, e.instance_path)) or '(data)'}: {e.message}" for e in errors[:5])
        raise InvalidEvent(f"{event.type} data does not match its schema: {details}")


@cache
def _validator(type_: str) -> jsonschema_rs.Draft202012Validator:
    # jsonschema-rs: the same draft 2020-12 verdicts (formats included) at about 0.6 µs an
    # event instead of about 200 µs with the pure-Python validator; this runs on every publish.
    return jsonschema_rs.Draft202012Validator(event_type(type_).schema(), validate_formats=True)


def parse_and_validate(raw: bytes | str) -> CloudEvent:
    event = parse(raw)
    validate(event)
    return event


def data_time(value: Any, fallback: datetime) -> datetime:
    """A time field of an event's data (RFC 3339), timezone-aware; `fallback` when absent or malformed."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return fallback
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return fallback
