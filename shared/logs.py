"""Structured JSON logs to stdout, each line carrying the event / correlation / trace ids."""

import json
import logging
import sys
from datetime import UTC, datetime

from shared.context import current_cause, current_event_id


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        cause = current_cause.get()
        if cause is not None:
            line["correlation_id"] = cause.correlation_id
            if cause.trace_id:
                line["trace_id"] = cause.trace_id
        event_id = current_event_id.get()
        if event_id is not None:
            line["event_id"] = event_id
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Faust and aiokafka are chatty at INFO about every rebalance step.
    for noisy in ("aiokafka", "faust", "mode", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
