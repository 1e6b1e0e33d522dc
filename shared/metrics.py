"""Prometheus metrics every service exports (names from CONTRACT.md)."""

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# `topic` beside CONTRACT.md's `type` (each type has one topic): the overview dashboard shows traffic per topic.
events_published = Counter("funnelcast_events_published_total", "Events published to Kafka", ["type", "topic"])
events_consumed = Counter("funnelcast_events_consumed_total", "Events applied by a consumer", ["type", "group"])
events_failed = Counter("funnelcast_events_failed_total", "Events a consumer could not apply", ["type", "group"])
events_duplicate = Counter(
    "funnelcast_events_duplicate_total", "Redelivered events recognised and skipped", ["type", "group"]
)
dead_letters = Counter("funnelcast_dead_letters_total", "Messages sent to a dead-letter topic", ["topic"])
outbox_backlog = Gauge("funnelcast_outbox_backlog", "Outbox events not yet published")
outbox_oldest_unpublished = Gauge(
    "funnelcast_outbox_oldest_unpublished_seconds", "Age of the oldest unpublished outbox event"
)
ready = Gauge("funnelcast_ready", "1 when /readyz would answer 200 (database and broker reachable), else 0")
outbox_republished = Counter(
    "funnelcast_outbox_republished_total", "Events published again because a new, empty broker lost them"
)
relay_failures = Counter("funnelcast_relay_publish_failures_total", "Relay batches that failed to publish")
consumer_lag = Gauge("funnelcast_consumer_lag", "Messages behind the partition end", ["topic", "partition", "group"])
handler_duration = Histogram(
    "funnelcast_handler_duration_seconds", "Time to apply one event", ["type", "group"], buckets=_LATENCY_BUCKETS
)
http_requests = Counter("funnelcast_http_requests_total", "HTTP requests", ["method", "route", "status"])
http_duration = Histogram(
    "funnelcast_http_request_duration_seconds", "HTTP request duration", ["method", "route"], buckets=_LATENCY_BUCKETS
)
