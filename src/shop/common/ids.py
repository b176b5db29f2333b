"""Identifiers: random UUIDs as strings, for every entity the shop creates."""

from __future__ import annotations

import uuid


def new_id() -> str:
    """A new random id (UUID4, 36 characters)."""
    return str(uuid.uuid4())


def is_id(value: str) -> bool:
    """True when ``value`` is a UUID in canonical form."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
