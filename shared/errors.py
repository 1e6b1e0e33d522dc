"""Errors of the domain, each with the HTTP status it maps to in one place (shared.web)."""


class DomainError(Exception):
    """A request the domain refuses; its message is shown to the caller."""

    status = 409
    title = "Conflict"


class NotFound(DomainError):
    status = 404
    title = "Not Found"


class Forbidden(DomainError):
    status = 403
    title = "Forbidden"


class PreconditionFailed(DomainError):
    status = 412
    title = "Precondition Failed"


class Unprocessable(DomainError):
    status = 422
    title = "Unprocessable Content"
