"""Funnelcast's common library: what every service needs, written once."""
