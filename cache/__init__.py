"""The library gateways and workers share: key model, RouteAuthCache on Redis, invalidation feed.

Knows nothing of Celery or STOMP; a gateway process imports it alone.
"""

from __future__ import annotations

from cache.errors import (
    CacheError,
    CachePermanentError,
    CacheUnavailableError,
    InvalidKeyError,
    InvalidValueError,
)
from cache.keys import CacheKey, format_key, parse_key, validate_id
from cache.names import Op
from cache.near import NearCache, NearCacheCollector
from cache.store import Applied, RouteAuthCache

__all__ = [
    "Applied",
    "CacheError",
    "CacheKey",
    "CachePermanentError",
    "CacheUnavailableError",
    "InvalidKeyError",
    "InvalidValueError",
    "NearCache",
    "NearCacheCollector",
    "Op",
    "RouteAuthCache",
    "format_key",
    "parse_key",
    "validate_id",
]
