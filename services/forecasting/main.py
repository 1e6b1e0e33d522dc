"""Wiring of the forecasting service."""

from shared.service import ServiceDefinition

service = ServiceDefinition(name="forecasting")
