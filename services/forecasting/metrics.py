"""Prometheus metrics of the forecasting service (served on /metrics beside the shared ones)."""

from prometheus_client import Counter, Histogram

recomputations = Counter(
    "funnelcast_forecast_recomputations_total", "Forecast periods recomputed after an event or a quota change"
)
rows_published = Counter(
    "funnelcast_forecast_rows_published_total", "Forecast rows whose figures moved and were published", ["by"]
)
update_lag = Histogram(
    "funnelcast_forecast_update_lag_seconds",
    "From the causing event's time to the forecast recomputed from it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
