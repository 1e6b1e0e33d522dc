"""Wiring of the opportunities service."""

from shared.service import ServiceDefinition

service = ServiceDefinition(name="opportunities")
