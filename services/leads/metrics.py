"""Prometheus metrics of the leads service (served on /metrics beside the shared ones)."""

from prometheus_client import Counter, Gauge

leads_captured = Counter(
    "funnelcast_leads_captured_total", "New leads captured (duplicates excluded)", ["source", "grade"]
)
lead_duplicates = Counter(
    "funnelcast_lead_duplicates_total", "Captures recognised as an existing lead", ["source", "matched_on"]
)
# Set by services/leads/overdue.py. Every instance counts the whole database, so instances agree: combine
# them with max, not sum.
follow_ups_overdue = Gauge(
    "funnelcast_leads_follow_ups_overdue",
    "Leads still new past their follow-up due time, as this instance last counted them (team / grade none:"
    " unassigned / ungraded)",
    ["team", "grade"],
)
