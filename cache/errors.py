"""Errors raised by the cache library.

Every failure the library reports is one of these, so callers map outcomes in one place::

    CacheError
     ├── InvalidKeyError        (also ValueError)  a key, id or service name that is not in the key model
     ├── InvalidValueError      (also ValueError)  a value that is not JSON-serialisable
     ├── CacheUnavailableError                     transient: Redis unreachable, timed out, loading, read-only
     │                                             replica, paused — retry later, nothing was changed
     └── CachePermanentError                       permanent: authentication refused, wrong key type,
                                                   script error
                                                   — retrying the same call will fail the same way

*Transient* errors are the only ones a Celery task retries; the rest are rejected and dead-lettered.
"""

from __future__ import annotations


class CacheError(Exception):
    """Base of every error the cache library raises."""


class InvalidKeyError(CacheError, ValueError):
    """A cache key, tenant/app id or service name is outside the key model."""


class InvalidValueError(CacheError, ValueError):
    """A value cannot be stored (it is not JSON-serialisable)."""


class CacheUnavailableError(CacheError):
    """Redis could not be reached or could not answer now; the same call may succeed later."""


class CachePermanentError(CacheError):
    """Redis refused the call in a way that retrying will not fix."""
