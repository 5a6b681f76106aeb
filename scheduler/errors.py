"""Errors of the scheduler, rooted in :class:`hypervm.errors.HyperVMError`.

The REST layer maps each class to one HTTP status; ``str(err)`` is the message the user sees.
Validation errors are :class:`hypervm.errors.InvalidSpec` (they name the field).
"""

from __future__ import annotations

from hypervm.errors import HyperVMError


class SchedulerError(HyperVMError):
    """Root of the scheduler's own errors."""

    status = 500
    #: HTTP headers of the answer
    headers: dict[str, str] = {}


class Unauthorized(SchedulerError):
    """No token, or a token no tenant has."""

    status = 401


class NotFound(SchedulerError):
    """No such workload for this tenant (another tenant's workloads are not found either)."""

    status = 404


class Conflict(SchedulerError):
    """The workload exists already."""

    status = 409


class Forbidden(SchedulerError):
    """The tenant may not make this call (it acts on every tenant: an operator's)."""

    status = 403


class QuotaExceeded(SchedulerError):
    """Admission refused: ``quota`` names the quota, the message the amounts."""

    status = 403

    def __init__(self, quota: str, message: str) -> None:
        self.quota = quota
        super().__init__(message, hint=f"lower the request or raise quota.{quota} of the tenant")


class PayloadTooLarge(SchedulerError):
    """A request body over the limit."""

    status = 413


class StorageUnavailable(SchedulerError):
    """The state database cannot be written (disk full, I/O error): nothing was changed."""

    status = 503
    headers = {"Retry-After": "30"}


class ConfigError(SchedulerError):
    """The command line, the tenants file or the state URL is wrong."""

    status = 500
