"""The CloudEvents envelope (shared/events/envelope.py): serialisation, parsing, validation."""

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from shared.events.envelope import CONTENT_TYPE, CloudEvent, InvalidEvent, parse, parse_and_validate, validate

ENGAGED = "sales.lead.engaged.v1"
ENGAGED_DATA = {"lead_id": "lead-8f3a", "visits": 4, "time_on_site_s": 612.5, "page_views": 17, "activity": "webinar"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def full_event() -> CloudEvent:
    return CloudEvent(
        type=ENGAGED,
        source="/funnelcast/leads",
        subject="lead-8f3a",
        data=dict(ENGAGED_DATA),
        id="evt-1",
        time=datetime(2026, 11, 3, 2, 15, 1, 250000, tzinfo=UTC),
        sequence=3,
        correlationid="corr-1",
        causationid="req-9",
        traceparent=TRACEPARENT,
    )


def wire(**changes: Any) -> dict[str, Any]:
    body = full_event().to_dict()
    for name, value in changes.items():
        if value is ...:
            body.pop(name)
        else:
            body[name] = value
    return body


def test_content_type_is_structured_cloudevents() -> None:
    assert CONTENT_TYPE == "application/cloudevents+json"


def test_to_dict_carries_every_attribute() -> None:
    body = full_event().to_dict()
    assert body == {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/funnelcast/leads",
        "type": ENGAGED,
        "subject": "lead-8f3a",
        "time": "2026-11-03T02:15:01.250000Z",
        "datacontenttype": "application/json",
        "dataschema": "urn:funnelcast:schema:sales.lead.engaged.v1",
        "sequence": 3,
        "correlationid": "corr-1",
        "causationid": "req-9",
        "traceparent": TRACEPARENT,
        "data": ENGAGED_DATA,
    }


def test_time_is_serialised_in_utc_with_z() -> None:
    shanghai = timezone(timedelta(hours=8))
    event = CloudEvent(type=ENGAGED, source="/funnelcast/leads", subject="l", data={},
                       time=datetime(2026, 11, 3, 10, 0, 0, tzinfo=shanghai))
    assert event.to_dict()["time"] == "2026-11-03T02:00:00Z"


def test_optional_extensions_are_left_out_when_unset() -> None:
    body = CloudEvent(type=ENGAGED, source="/funnelcast/leads", subject="l", data={}).to_dict()
    for name in ("sequence", "correlationid", "causationid", "traceparent"):
        assert name not in body
    assert body["id"] and body["time"].endswith("Z")


def test_default_ids_are_unique() -> None:
    one = CloudEvent(type=ENGAGED, source="s", subject="l", data={})
    two = CloudEvent(type=ENGAGED, source="s", subject="l", data={})
    assert one.id != two.id


def test_dataschema_is_the_type_urn() -> None:
    event = CloudEvent(type="sales.opportunity.won.v1", source="/funnelcast/opportunities", subject="o", data={})
    assert event.to_dict()["dataschema"] == "urn:funnelcast:schema:sales.opportunity.won.v1"
    assert event.topic == "sales.opportunities"


def test_to_bytes_and_parse_round_trip() -> None:
    event = full_event()
    raw = event.to_bytes()
    assert isinstance(raw, bytes)
    assert json.loads(raw)["time"] == "2026-11-03T02:15:01.250000Z"
    back = parse(raw)
    assert back == event
    assert back.time.utcoffset() == timedelta(0)
    assert parse(event.to_json()) == event  # str is accepted too


def test_non_ascii_and_decimal_data_survive() -> None:
    from decimal import Decimal

    event = CloudEvent(type=ENGAGED, source="s", subject="l",
                       data={"name": "王芳", "amount": Decimal("1200000.50"),
                             "at": datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=8)))})
    raw = event.to_bytes()
    assert "王芳".encode() in raw
    data = parse(raw).data
    assert data == {"name": "王芳", "amount": "1200000.50", "at": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize("raw", [b"not json", b"{\"specversion\": ", b"\xff\xfe\x00"])
def test_parse_rejects_non_json(raw: bytes) -> None:
    with pytest.raises(InvalidEvent, match="not JSON"):
        parse(raw)


@pytest.mark.parametrize("raw", [b"[]", b"\"event\"", b"42", b"null"])
def test_parse_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(InvalidEvent, match="JSON object"):
        parse(raw)


def test_parse_names_every_missing_attribute() -> None:
    body = wire(id=..., subject=..., data=...)
    with pytest.raises(InvalidEvent) as caught:
        parse(json.dumps(body))
    message = str(caught.value)
    assert "missing" in message
    for name in ("id", "subject", "data"):
        assert name in message
    assert "source" not in message


@pytest.mark.parametrize("name", ["specversion", "id", "source", "type", "subject", "time", "data"])
def test_parse_rejects_each_missing_required_attribute(name: str) -> None:
    with pytest.raises(InvalidEvent, match=f"missing CloudEvent attributes: {name}$"):
        parse(json.dumps(wire(**{name: ...})))


@pytest.mark.parametrize("version", ["0.3", "1", 1.0, None])
def test_parse_rejects_other_specversions(version: Any) -> None:
    with pytest.raises(InvalidEvent, match="specversion"):
        parse(json.dumps(wire(specversion=version)))


@pytest.mark.parametrize("data", [[1, 2], "text", 7, None])
def test_parse_rejects_non_object_data(data: Any) -> None:
    with pytest.raises(InvalidEvent, match="data must be a JSON object"):
        parse(json.dumps(wire(data=data)))


@pytest.mark.parametrize("time", ["yesterday", "2026-13-01T00:00:00Z", "", 1700000000, None])
def test_parse_rejects_bad_time(time: Any) -> None:
    with pytest.raises(InvalidEvent, match="time is not RFC 3339"):
        parse(json.dumps(wire(time=time)))


def test_parse_rejects_time_without_offset() -> None:
    with pytest.raises(InvalidEvent, match="time"):
        parse(json.dumps(wire(time="2026-11-03T02:15:01")))


@pytest.mark.parametrize("sequence", ["3", 3.5, [3], {"n": 3}])
def test_parse_rejects_non_integer_sequence(sequence: Any) -> None:
    with pytest.raises(InvalidEvent, match="sequence must be an integer"):
        parse(json.dumps(wire(sequence=sequence)))


def test_parse_rejects_boolean_sequence() -> None:
    with pytest.raises(InvalidEvent, match="sequence must be an integer"):
        parse(json.dumps(wire(sequence=True)))


def test_parse_accepts_absent_optional_extensions() -> None:
    event = parse(json.dumps(wire(sequence=..., correlationid=..., causationid=..., traceparent=...)))
    assert (event.sequence, event.correlationid, event.causationid, event.traceparent) == (None, None, None, None)


def test_validate_accepts_schema_valid_data() -> None:
    validate(full_event())
    assert parse_and_validate(full_event().to_bytes()) == full_event()


def test_validate_rejects_unknown_type() -> None:
    event = CloudEvent(type="sales.lead.teleported.v1", source="s", subject="l", data={})
    with pytest.raises(InvalidEvent, match="sales.lead.teleported.v1"):
        validate(event)


def test_parse_and_validate_rejects_unknown_type_on_the_wire() -> None:
    with pytest.raises(InvalidEvent, match="sales.lead.teleported.v1"):
        parse_and_validate(json.dumps({**wire(dataschema=...), "type": "sales.lead.teleported.v1"}))


def test_validate_names_the_offending_field() -> None:
    event = CloudEvent(type=ENGAGED, source="s", subject="l", data={**ENGAGED_DATA, "visits": "four"})
    with pytest.raises(InvalidEvent) as caught:
        validate(event)
    message = str(caught.value)
    assert ENGAGED in message and "schema" in message
    assert "visits" in message
    assert "page_views" not in message


def test_validate_names_a_missing_required_field() -> None:
    data = {k: v for k, v in ENGAGED_DATA.items() if k != "page_views"}
    with pytest.raises(InvalidEvent, match="page_views"):
        validate(CloudEvent(type=ENGAGED, source="s", subject="l", data=data))


def test_validate_checks_formats() -> None:
    data = {**ENGAGED_DATA, "observed_at": "not a time Z"}
    with pytest.raises(InvalidEvent, match="observed_at"):
        validate(CloudEvent(type=ENGAGED, source="s", subject="l", data=data))
