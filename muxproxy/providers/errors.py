"""How provider failures are classified."""

from __future__ import annotations


class UpstreamError(Exception):
    """A failed upstream call, classified. ``message`` is safe to show the client."""

    def __init__(self, message: str, *, transient: bool, code: str | None = None,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.code = code or ("upstream_unavailable" if transient else "upstream_error")
        self.status = status
        self.retry_after = retry_after


class Unsupported(Exception):
    """The request asks for something this provider cannot do (a 400 before any call)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
