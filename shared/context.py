"""Per-request / per-event context that travels into logs and into the events a change causes."""

import re
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


_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C `traceparent`, else None (the caller starts a new trace)."""
    match = _TRACEPARENT.match(traceparent or "")
    if match is None:
        return None
    version, trace_id, span_id, _ = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id
