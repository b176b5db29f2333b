"""Luhn, expiry, the card's repr, and the simulated provider's card conventions."""

from __future__ import annotations

import random
from datetime import date

import pytest

from shop.common.money import Money
from shop.payments import provider as provider_module
from shop.payments.domain import Card, ProviderUnavailableError, expired, luhn_valid
from shop.payments.provider import SimulatedProvider

APPROVE = "4242424242424242"
DECLINE = "4000000000000002"
NO_FUNDS = "4000000000009995"


@pytest.mark.parametrize(
    "number",
    [APPROVE, DECLINE, NO_FUNDS, "5555555555554444", "378282246310005", "6011111111111117"],
)
def test_luhn_accepts_test_cards(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize(
    "number", ["4242424242424241", "1234567812345678", "", "42424242a4242424", "４２４２"]
)
def test_luhn_rejects(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize(
    ("month", "year", "is_expired"),
    [(5, 2024, False), (4, 2024, True), (12, 2023, True), (1, 2025, False), (6, 2024, False)],
)
def test_expiry_is_end_of_month(month: int, year: int, is_expired: bool) -> None:
    assert expired(month, year, date(2024, 5, 31)) is is_expired


def test_card_repr_hides_number_and_cvc() -> None:
    card = Card(APPROVE, 12, 2030, "987")
    assert card.last4 == "4242"
    assert APPROVE not in repr(card) and "987" not in repr(card)


def card(number: str) -> Card:
    return Card(number, 12, 2030, "123")


@pytest.mark.parametrize(
    ("number", "approved", "code"),
    [
        (APPROVE, True, ""),
        (DECLINE, False, "card_declined"),
        (NO_FUNDS, False, "insufficient_funds"),
        ("5555555555554444", True, ""),
        ("4242424242424241", False, "incorrect_number"),
    ],
)
async def test_simulated_card_conventions(number: str, approved: bool, code: str) -> None:
    result = await SimulatedProvider().charge(Money(100), card(number), "k")
    assert (result.approved, result.decline_code) == (approved, code)
    assert result.charge_id.startswith("ch_")


async def test_simulated_charge_is_idempotent_per_key() -> None:
    provider = SimulatedProvider()
    first = await provider.charge(Money(100), card(APPROVE), "k1")
    assert await provider.charge(Money(100), card(APPROVE), "k1") == first
    await provider.charge(Money(100), card(APPROVE), "k2")
    assert provider.charges_made == 2


async def test_simulated_refund_is_idempotent_per_charge() -> None:
    provider = SimulatedProvider()
    first = await provider.refund("ch_1", Money(100))
    assert await provider.refund("ch_1", Money(100)) == first
    assert provider.refunds_made == 1


async def test_failure_rate_is_deterministic_with_a_seeded_rng() -> None:
    predictor = random.Random(7)
    provider = SimulatedProvider(failure_rate=0.5, rng=random.Random(7))
    outcomes = []
    for i in range(20):
        fails = predictor.random() < 0.5
        try:
            await provider.charge(Money(100), card(APPROVE), f"k{i}")
            outcomes.append((fails, False))
        except ProviderUnavailableError:
            outcomes.append((fails, True))
    assert all(predicted == happened for predicted, happened in outcomes)
    assert {happened for _, happened in outcomes} == {True, False}


async def test_failure_rate_one_always_fails() -> None:
    provider = SimulatedProvider(failure_rate=1.0)
    with pytest.raises(ProviderUnavailableError):
        await provider.charge(Money(100), card(APPROVE), "k")
    assert provider.charges_made == 0


def test_failure_rate_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        SimulatedProvider(failure_rate=1.5)


async def test_latency_is_awaited(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(provider_module.asyncio, "sleep", fake_sleep)
    provider = SimulatedProvider(latency_ms=250)
    await provider.charge(Money(100), card(APPROVE), "k")
    await provider.refund("ch", Money(100))
    assert slept == [0.25, 0.25]
