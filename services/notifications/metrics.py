"""Prometheus metrics of the notifications service (served on /metrics beside the shared ones)."""

from prometheus_client import Counter, Gauge, Histogram

notifications = Counter(
    "funnelcast_notifications_total", "Notifications by channel and outcome", ["channel", "outcome"]
)
push_latency = Histogram(
    "funnelcast_notification_push_latency_seconds",
    "From the causing event's time to the notification written to a WebSocket",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
webhook_deliveries = Counter(
    "funnelcast_webhook_deliveries_total", "Webhook delivery attempts by outcome and attempt number",
    ["outcome", "attempt"],
)
websocket_connections = Gauge("funnelcast_websocket_connections", "Open WebSocket connections on this instance")
timers_due = Gauge("funnelcast_timers_due", "Timers past their due time, not yet fired")
timers_fired = Counter("funnelcast_timers_fired_total", "Timers fired", ["kind"])
