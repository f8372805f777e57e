"""The cache key model: ``tenant#app#path#KIND#env``.

Ids (tenant, app, service, event ids and each key part) use the characters ``[A-Za-z0-9._:/@-]`` and are at
most 256 characters long. ``#`` separates the parts and can never occur inside one, so a key splits
unambiguously and no id can ever widen into a Redis glob (``*``, ``?``, ``[`` are refused too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cache.errors import InvalidKeyError

MAX_ID_LENGTH = 256
# `_` is accepted besides DESIGN.md's set: the original's own example names the service "stripe_payment",
# and `_` is no glob metacharacter.
ID_CHARSET = "A-Za-z0-9._:/@_-"
_ID_RE = re.compile(rf"[{ID_CHARSET}]+")
_KEY_PARTS = ("tenant", "app", "path", "kind", "env")


def _describe(value: str) -> str:
    shown = value if len(value) <= 40 else value[:37] + "..."
    return repr(shown)


def validate_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a valid id, else raise :class:`InvalidKeyError` naming the problem."""
    if not isinstance(value, str):
        raise InvalidKeyError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidKeyError(f"{what} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidKeyError(f"{what} is {len(value)} characters long (at most {MAX_ID_LENGTH})")
    if _ID_RE.fullmatch(value) is None:
        bad = sorted({c for c in value if _ID_RE.fullmatch(c) is None})
        raise InvalidKeyError(
            f"{what} {_describe(value)} has characters outside [{ID_CHARSET}]: {''.join(bad)!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class CacheKey:
    """One parsed cache key."""

    tenant: str
    app: str
    path: str
    kind: str
    env: str

    @classmethod
    def parse(cls, key: object) -> CacheKey:
        """Parse ``tenant#app#path#KIND#env``; raise :class:`InvalidKeyError` saying what is wrong."""
        if not isinstance(key, str):
            raise InvalidKeyError(f"cache key must be a string, got {type(key).__name__}")
        parts = key.split("#")
        if len(parts) != len(_KEY_PARTS):
            raise InvalidKeyError(
                f"cache key {_describe(key)} has {len(parts)} '#'-separated parts; "
                "expected 5: tenant#app#path#KIND#env"
            )
        for name, part in zip(_KEY_PARTS, parts, strict=True):
            validate_id(part, f"{name} part of cache key")
        return cls(*parts)

    def format(self) -> str:
        return "#".join((self.tenant, self.app, self.path, self.kind, self.env))

    def __str__(self) -> str:
        return self.format()


def format_key(tenant: str, app: str, path: str, kind: str, env: str) -> str:
    """Build a key from its parts, validating each one."""
    key = CacheKey(tenant, app, path, kind, env)
    for name in _KEY_PARTS:
        validate_id(getattr(key, name), f"{name} part of cache key")
    return key.format()


def parse_key(key: object) -> CacheKey:
    return CacheKey.parse(key)
