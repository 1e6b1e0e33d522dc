"""The Kafka headers that say why and where a dead-lettered message failed: one definition.

shared/inbox.py writes them (`failure_headers`) beside the message's own headers, shared/runtime/dlq.py
reads them and strips them again when it re-drives the message, and the AsyncAPI document describes
them (`DeadLetterHeaders`) from the same names and descriptions.
"""

from dataclasses import dataclass
from datetime import datetime

PREFIX = "dlq-"
# characters: an exception message can quote a whole event, and a header is no place for that
_ERROR_LIMIT = 2000


@dataclass(frozen=True)
class Header:
    name: str
    description: str


ERROR = Header("dlq-error", "Why the consumer could not process the message.")
CONSUMER_GROUP = Header("dlq-consumer-group", "The consumer group that dead-lettered it.")
ORIGINAL_TOPIC = Header("dlq-original-topic", "The topic it was read from.")
ORIGINAL_PARTITION = Header("dlq-original-partition", "Its partition there.")
ORIGINAL_OFFSET = Header("dlq-original-offset", "Its offset there.")
FAILED_AT = Header("dlq-failed-at", "When it failed (RFC 3339).")
# Every header a dead letter gets, in the order `failure_headers` writes them.
FAILURE_HEADERS = (ERROR, CONSUMER_GROUP, ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, FAILED_AT)

REPLAYED_FROM = Header(
    "dlq-replayed-from",
    "Set on a message `funnelcast dlq replay` re-drove from its dead-letter topic: `<topic>.dlq:<partition>:<offset>`.",
)


def failure_headers(
    error: str, group: str, topic: str, partition: int, offset: int, failed_at: datetime
) -> list[tuple[str, bytes]]:
    """The headers added to a message that `group` could not process, read at `topic`[`partition`]@`offset`."""
    values = {
        ERROR: error[:_ERROR_LIMIT],
        CONSUMER_GROUP: group,
        ORIGINAL_TOPIC: topic,
        ORIGINAL_PARTITION: str(partition),
        ORIGINAL_OFFSET: str(offset),
        FAILED_AT: failed_at.isoformat(),
    }
    return [(header.name, values[header].encode()) for header in FAILURE_HEADERS]
