"""Wiring of the scoring service."""

from shared.service import ServiceDefinition

service = ServiceDefinition(name="scoring")
