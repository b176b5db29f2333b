"""Times as the stores keep them: aware UTC datetimes, or integer microseconds since the epoch.

>>> from datetime import datetime
>>> as_utc(datetime(2030, 1, 1)).isoformat()
'2030-01-01T00:00:00+00:00'
>>> from_micros(to_micros(as_utc(datetime(2030, 1, 1)))) == as_utc(datetime(2030, 1, 1))
True
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one (SQLite hands those back) is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (sorts the same on every database)."""
    return (moment - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)
