"""The domain's exception tree.

Each surface renders these in its own error shape at the edge; nothing below the
surfaces knows about HTTP bodies.
"""

from __future__ import annotations


class MuxError(Exception):
    """A request-level failure with an HTTP status and a stable code."""

    status = 500
    code = "internal_error"
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after


class InvalidRequest(MuxError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class Unauthorized(MuxError):
    status = 401
    code = "invalid_api_key"
    type = "authentication_error"


class InsufficientCredits(MuxError):
    status = 402
    code = "insufficient_credits"
    type = "insufficient_quota"


class Forbidden(MuxError):
    status = 403
    code = "forbidden"
    type = "permission_error"


class NotFound(MuxError):
    status = 404
    code = "not_found"
    type = "not_found_error"


class Expired(NotFound):
    """A job's results outlived ``storage.retention_days`` and were deleted."""

    code = "expired"

    def __init__(self, message: str = "this result has expired and was deleted "
                 "(storage.retention_days)") -> None:
        super().__init__(message)


class MethodNotAllowed(MuxError):
    status = 405
    code = "method_not_allowed"
    type = "invalid_request_error"


class Conflict(MuxError):
    status = 409
    code = "conflict"
    type = "invalid_request_error"


class Unprocessable(MuxError):
    status = 422
    code = "unprocessable"
    type = "invalid_request_error"


class PayloadTooLarge(MuxError):
    status = 413
    code = "payload_too_large"
    type = "invalid_request_error"


class RequestTimeout(MuxError):
    status = 408
    code = "request_timeout"
    type = "invalid_request_error"


class HeaderTooLarge(MuxError):
    status = 431
    code = "header_too_large"
    type = "invalid_request_error"


class UnsupportedMediaType(MuxError):
    status = 415
    code = "unsupported_media_type"
    type = "invalid_request_error"


class RateLimited(MuxError):
    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"


class InternalError(MuxError):
    status = 500
    code = "internal_error"
    type = "server_error"


class UpstreamFailed(MuxError):
    status = 502
    code = "upstream_error"
    type = "upstream_error"


class WaitTimeout(MuxError):
    status = 504
    code = "timeout"
    type = "timeout_error"


class StillRunning(WaitTimeout):
    """A wait for a job's end gave up first: its time ran out, or the gateway is
    stopping (``stopping``). The job itself goes on."""

    def __init__(self, message: str, *, job_id: str, stopping: bool) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.stopping = stopping


class ServiceUnavailable(MuxError):
    status = 503
    code = "unavailable"
    type = "server_error"


class StorageFailing(ServiceUnavailable):
    """The gateway's own image storage could not be reached or refused the read (an
    unreachable bucket, a failing disk): the image is kept, and the same request may
    succeed once the storage is back."""

    code = "storage_error"

    def __init__(self, message: str = "the gateway's image storage is unreachable; "
                 "retry shortly", *, retry_after: float = 30.0) -> None:
        super().__init__(message, retry_after=retry_after)


class StoreUnavailable(ServiceUnavailable):
    """The gateway's own database refused the work (locked past its busy timeout,
    disk full, read-only): nothing was changed, and the same request may succeed
    in a moment. The backend maps its driver's errors to this at one boundary."""

    code = "store_unavailable"

    def __init__(self, message: str = "the gateway's database is busy or failing; "
                 "retry shortly", *, retry_after: float = 2.0) -> None:
        super().__init__(message, retry_after=retry_after)


class RangeNotSatisfiable(MuxError):
    status = 416
    code = "range_not_satisfiable"
    type = "invalid_request_error"


def status_error(status: int, message: str) -> MuxError:
    """The domain error for a bare HTTP status (routing 404/405 and the like)."""
    for cls in (InvalidRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed,
                PayloadTooLarge, UnsupportedMediaType, RateLimited):
        if cls.status == status:
            return cls(message)
    return InternalError(message)
