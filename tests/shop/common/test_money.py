from __future__ import annotations

import pytest
from google.type import money_pb2
from hypothesis import given
from hypothesis import strategies as st

from shop.common.money import Money, MoneyError, from_proto, to_proto


@given(st.integers(min_value=-(10**15), max_value=10**15), st.sampled_from(["USD", "EUR", "JPY"]))
def test_proto_round_trip(minor: int, currency: str) -> None:
    assert from_proto(to_proto(Money(minor, currency))) == Money(minor, currency)


def test_units_and_nanos() -> None:
    pb = to_proto(Money(-1999, "USD"))
    assert (pb.units, pb.nanos) == (-19, -990000000)
    assert str(Money(123456, "USD")) == "1234.56 USD"
    assert str(Money(500, "JPY")) == "500 JPY"


def test_arithmetic_keeps_currency() -> None:
    assert Money(150) * 3 + Money(50) == Money(500)
    with pytest.raises(MoneyError):
        _ = Money(1, "USD") + Money(1, "EUR")


@pytest.mark.parametrize(
    ("units", "nanos", "currency"),
    [
        (1, 5, "USD"),
        (1, -10_000_000, "USD"),
        (0, 1_000_000_000, "USD"),
        (1, 0, "usd"),
        (1, 0, "US"),
    ],
)
def test_rejects_what_is_not_money(units: int, nanos: int, currency: str) -> None:
    with pytest.raises(MoneyError):
        from_proto(money_pb2.Money(currency_code=currency, units=units, nanos=nanos))


def test_empty_currency_means_default() -> None:
    assert from_proto(money_pb2.Money(units=2)) == Money(200, "USD")
