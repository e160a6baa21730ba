"""Errors of the audit store.

They live here rather than in ``warden/errors.py`` so the audit package can be built
without touching shared modules; both derive from ``warden.errors.WardenError``.
"""

from __future__ import annotations

from warden.errors import WardenError


class AuditError(WardenError):
    """Base class of the audit package's errors."""


class AuditUnavailable(AuditError):
    """The audit store cannot be written (or read) right now.

    The gateway treats this as *deny*: no audit record, no access. Nothing of the
    failed append was written; once the store works again appends continue the chain
    without a gap.
    """


class AuditClosed(AuditUnavailable):
    """The store has been closed; appends are refused."""


class AuditConfigError(AuditError):
    """A store URL, key or option is malformed (bad input, not an outage)."""
