"""Collecting a request's field violations, then failing once with all of them.

>>> violations: Violations = []
>>> check_id(violations, "order_id", "nope")
>>> violations
[('order_id', 'order_id must be a UUID')]
"""

from __future__ import annotations

from grpckit.errors import invalid_argument
from shop.common.ids import is_id

#: (field path, description) pairs, in the order they were found.
Violations = list[tuple[str, str]]


def raise_if_any(violations: Violations, message: str) -> None:
    """INVALID_ARGUMENT with a BadRequest listing every violation, if there is any."""
    if violations:
        raise invalid_argument(message, violations)


def check_id(violations: Violations, field: str, value: str) -> None:
    """Record a violation when ``value`` is not an id this shop issues (a UUID)."""
    if not is_id(value):
        violations.append((field, f"{field} must be a UUID"))
