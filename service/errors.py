"""Domain errors of the service and the HTTP status each one maps to.

These exceptions carry no web-framework types, so the pure preprocessing that
training shares can raise them too; `service.api.error_handlers` turns them into JSON
responses with a `detail` a person can read.
"""

from __future__ import annotations


class CPCError(Exception):
    """Base of every error the service reports to a client."""

    status_code: int = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(CPCError):
    """Undecodable, corrupt or empty input (400)."""

    status_code = 400


class Unauthorized(CPCError):
    """Missing or wrong API key (401)."""

    status_code = 401


class Forbidden(CPCError):
    """A valid key that may not do this, such as a write with the read-only key (403)."""

    status_code = 403


class NotFound(CPCError):
    """Unknown model, collection or item (404)."""

    status_code = 404


class Conflict(CPCError):
    """State that conflicts with the request, such as an existing collection (409)."""

    status_code = 409


class TooLarge(CPCError):
    """A body, audio length, image size or batch over its limit (413)."""

    status_code = 413


class UnsupportedMedia(CPCError):
    """A media type that no loaded model takes (415)."""

    status_code = 415


class Overloaded(CPCError):
    """The inference queue is full (429)."""

    status_code = 429


class InsufficientStorage(CPCError):
    """The data folder has no room for a write that must be durable (507); nothing of the
    write was kept, and the same write succeeds once space is freed."""

    status_code = 507


class NotReady(CPCError):
    """The service is still loading or is draining (503)."""

    status_code = 503


class TimedOut(CPCError):
    """The request took longer than CPC_REQUEST_TIMEOUT_S (504)."""

    status_code = 504


class OutOfService(CPCError):
    """A collection whose files are damaged, kept out of service until an operator acts
    (503); the other collections serve as usual."""

    status_code = 503


class BundleError(Exception):
    """A model bundle on disk is missing a file or does not match the schema."""


class Unavailable(CPCError):
    """A service this one depends on, such as the Milvus vector database, is unreachable
    or failing (503); `retry_after_s`, when known, is how long a client should wait before
    trying again (for a Retry-After header)."""

    status_code = 503

    def __init__(self, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
