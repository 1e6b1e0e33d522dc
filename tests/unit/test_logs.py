import json
import logging

from shared.context import Cause, current_cause, current_event_id, new_traceparent, trace_id_of
from shared.logs import JsonFormatter


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("funnelcast.test", logging.WARNING, __file__, 1, message, None, None)


def test_a_log_line_is_json_with_the_ids_of_its_context() -> None:
    traceparent = new_traceparent()
    cause_token = current_cause.set(Cause(correlation_id="corr-1", causation_id="evt-0", traceparent=traceparent))
    event_token = current_event_id.set("evt-1")
    try:
        line = json.loads(JsonFormatter("scoring").format(record("scored 线索 lead-7")))
    finally:
        current_event_id.reset(event_token)
        current_cause.reset(cause_token)
    assert line["service"] == "scoring" and line["level"] == "warning"
    assert line["message"] == "scored 线索 lead-7"
    assert line["correlation_id"] == "corr-1" and line["event_id"] == "evt-1"
    assert line["trace_id"] == trace_id_of(traceparent)
    assert line["time"].endswith("Z")


def test_a_log_line_outside_any_request_has_no_ids() -> None:
    line = json.loads(JsonFormatter("leads").format(record("started")))
    assert "correlation_id" not in line and "event_id" not in line and "trace_id" not in line
