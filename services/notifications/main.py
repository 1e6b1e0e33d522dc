"""Wiring of the notifications service."""

from shared.service import ServiceDefinition

service = ServiceDefinition(name="notifications")
