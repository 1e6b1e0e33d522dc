"""Prometheus metrics of the scoring service (served on /metrics beside the shared ones)."""

from prometheus_client import Counter, Gauge, Histogram

scores_computed = Counter(
    "funnelcast_scores_computed_total", "Scores computed and published", ["kind", "model_version"]
)
scoring_latency = Histogram(
    "funnelcast_scoring_latency_seconds",
    "From the causing event's time to its score being computed",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
model_auc = Gauge(
    "funnelcast_model_auc", "ROC AUC on its held-out slice of the active learned model (NaN: the rules)", ["kind"]
)
training_runs = Counter("funnelcast_model_training_runs_total", "Model training runs", ["kind", "result"])
