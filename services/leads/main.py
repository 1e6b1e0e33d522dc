"""Wiring of the leads service."""

from shared.service import ServiceDefinition

service = ServiceDefinition(name="leads")
