"""Events: the CloudEvents envelope, the catalogue of event types, their JSON Schemas."""
