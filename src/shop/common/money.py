"""Money as integer minor units, converted at the edge to and from ``google.type.Money``.

Amounts never touch floats. The shop works in one currency per order; each currency's minor unit
is 1/100 (ISO 4217 exceptions like JPY are listed in ``_MINOR_DIGITS``).

>>> m = Money(1999, "USD")
>>> to_proto(m).units, to_proto(m).nanos
(19, 990000000)
>>> from_proto(to_proto(m)) == m
True
"""

from __future__ import annotations

from dataclasses import dataclass

from google.type import money_pb2

_NANOS_PER_UNIT = 1_000_000_000
_MINOR_DIGITS = {"JPY": 0, "KRW": 0, "BHD": 3, "KWD": 3}
DEFAULT_CURRENCY = "USD"


class MoneyError(ValueError):
    """An amount that cannot be represented: a fraction of the minor unit, mixed signs, ..."""


@dataclass(frozen=True, order=True)
class Money:
    """An amount in integer minor units (cents for USD)."""

    minor: int
    currency: str = DEFAULT_CURRENCY

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.minor - other.minor, self.currency)

    def __mul__(self, factor: int) -> Money:
        return Money(self.minor * factor, self.currency)

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise MoneyError(f"cannot combine {self.currency} and {other.currency}")

    @staticmethod
    def zero(currency: str = DEFAULT_CURRENCY) -> Money:
        return Money(0, currency)

    def __str__(self) -> str:
        digits = minor_digits(self.currency)
        sign = "-" if self.minor < 0 else ""
        whole, frac = divmod(abs(self.minor), 10**digits)
        return (
            f"{sign}{whole}.{frac:0{digits}d} {self.currency}"
            if digits
            else f"{sign}{whole} {self.currency}"
        )


def minor_digits(currency: str) -> int:
    return _MINOR_DIGITS.get(currency, 2)


def to_proto(money: Money) -> money_pb2.Money:
    digits = minor_digits(money.currency)
    scale = 10**digits
    sign = -1 if money.minor < 0 else 1
    units, frac = divmod(abs(money.minor), scale)
    nanos = frac * (_NANOS_PER_UNIT // scale)
    return money_pb2.Money(currency_code=money.currency, units=sign * units, nanos=sign * nanos)


def from_proto(message: money_pb2.Money) -> Money:
    """Convert a ``google.type.Money``; raises MoneyError for what is not a valid amount."""
    currency = message.currency_code or DEFAULT_CURRENCY
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise MoneyError(f"currency_code {currency!r} is not an ISO 4217 code like 'USD'")
    if not -_NANOS_PER_UNIT < message.nanos < _NANOS_PER_UNIT:
        raise MoneyError("nanos must be between -999,999,999 and 999,999,999")
    if (message.units > 0 and message.nanos < 0) or (message.units < 0 and message.nanos > 0):
        raise MoneyError("units and nanos must have the same sign")
    scale = 10 ** minor_digits(currency)
    step = _NANOS_PER_UNIT // scale
    if message.nanos % step:
        raise MoneyError(f"{currency} amounts cannot be finer than 1/{scale} of a unit")
    return Money(message.units * scale + message.nanos // step, currency)
