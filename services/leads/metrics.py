"""Prometheus metrics of the leads service (served on /metrics beside the shared ones)."""

from prometheus_client import Counter

leads_captured = Counter(
    "funnelcast_leads_captured_total", "New leads captured (duplicates excluded)", ["source", "grade"]
)
lead_duplicates = Counter(
    "funnelcast_lead_duplicates_total", "Captures recognised as an existing lead", ["source", "matched_on"]
)
