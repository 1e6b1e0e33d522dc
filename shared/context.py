"""Per-request / per-event context that travels into logs and into the events a change causes."""

import secrets
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    correlation_id: str
    causation_id: str | None = None
    traceparent: str | None = None

    @property
    def trace_id(self) -> str | None:
        return trace_id_of(self.traceparent)


current_cause: ContextVar[Cause | None] = ContextVar("current_cause", default=None)
current_event_id: ContextVar[str | None] = ContextVar("current_event_id", default=None)


def new_traceparent() -> str:
    """A W3C Trace Context `traceparent` starting a new trace (sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """Same trace, new span id; a new trace when the parent is absent or malformed."""
    trace_id = trace_id_of(parent)
    if trace_id is None:
        return new_traceparent()
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


def trace_id_of(traceparent: str | None) -> str | None:
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    try:
        int(parts[1], 16)
    except ValueError:
        return None
    return parts[1]
