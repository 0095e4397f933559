"""Reasons a job fails that are not its provider's fault.

The runner fails the job with the fault's ``code`` at once: no retry, no other
route, no further upstream call, and the provider's circuit breaker is left as it
was (a bad reference or a full disk says nothing about the provider's health).
``message`` is shown to the client, so it never names internal addresses, ports,
paths or response bodies.
"""

from __future__ import annotations

from typing import ClassVar


class JobFault(Exception):
    code: ClassVar[str] = "gateway_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadReference(JobFault):
    """A reference image the client named could not be fetched or is refused."""

    code = "invalid_reference"


class InputMissing(JobFault):
    """A reference image the gateway stored at submit is gone."""

    code = "input_missing"


class StorageFault(JobFault):
    """The gateway could not write (or read) its own blob storage."""

    code = "storage_error"
