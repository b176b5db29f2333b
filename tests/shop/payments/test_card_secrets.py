"""Card numbers and CVCs never reach a log line or an error sent back (last 4 digits only).

The service runs with the production logging (JSON on stderr, here at DEBUG, so SQL and its
parameters are logged too) and the recovery and logging interceptors, through every outcome:
captured, declined, invalid, provider unavailable, and a crash inside the charge.
"""

from __future__ import annotations

import logging as stdlib_logging
import re
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path

import grpc
import pytest
import structlog

from grpckit import App, ServerConfig, StatusError, configure_logging
from grpckit.interceptors import logging, recovery
from grpckit.logs import flush_logs
from grpckit.testing import Service, serve_in_process
from shop.api.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.common import money
from shop.common.db import Database
from shop.common.ids import new_id
from shop.common.money import Money
from shop.payments.domain import Card, ProviderUnavailableError
from shop.payments.main import SERVICE
from shop.payments.processor import PaymentProcessor
from shop.payments.provider import ChargeResult, RefundResult, SimulatedProvider
from shop.payments.service import PaymentServicer
from shop.payments.store import MIGRATIONS, PaymentsStore

APPROVED = "4242424242424242"
DECLINED = "4000000000000002"
NOT_LUHN = "4242424242424241"
CVC = "7319"
#: The CVC as a value of its own (not inside an id, a timestamp or a duration).
CVC_VALUE = re.compile(rf"(?<![\w.:-]){CVC}(?![\w.:-])")


class FlakyProvider:
    """The simulated provider, except for keys starting ``down`` (unavailable) or ``crash``."""

    def __init__(self) -> None:
        self._inner = SimulatedProvider()

    async def charge(self, amount: Money, card: Card, idempotency_key: str) -> ChargeResult:
        if idempotency_key.startswith("down"):
            raise ProviderUnavailableError("the payment provider is unavailable")
        if idempotency_key.startswith("crash"):
            raise RuntimeError("the provider client has a bug")
        return await self._inner.charge(amount, card, idempotency_key)

    async def refund(self, charge_id: str, amount: Money) -> RefundResult:
        return await self._inner.refund(charge_id, amount)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The logging configuration of before the test, after it."""
    root = stdlib_logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    flush_logs()
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[payments_pb2_grpc.PaymentServiceAsyncStub]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'payments.db'}", schema="payments")
    await db.migrate(MIGRATIONS)
    store = PaymentsStore(db)
    servicer = PaymentServicer(
        store, PaymentProcessor(store, FlakyProvider()), today=lambda: date(2024, 5, 15)
    )
    app = App(ServerConfig(grace_period=1.0), interceptors=[recovery(), logging()])
    added = Service(payments_pb2_grpc.add_PaymentServiceServicer_to_server, servicer, SERVICE)
    try:
        async with serve_in_process(added, app=app) as server:
            yield payments_pb2_grpc.PaymentServiceStub(server.channel)
    finally:
        await db.close()


def request(card: str, key: str) -> payments_pb2.ProcessPaymentRequest:
    return payments_pb2.ProcessPaymentRequest(
        order_id=new_id(),
        amount=money.to_proto(Money(2500)),
        method=payments_pb2.PaymentMethod(card_number=card, exp_month=12, exp_year=2030, cvc=CVC),
        idempotency_key=key,
        user_id=new_id(),
    )


async def test_no_card_number_or_cvc_in_logs_or_errors(
    stub: payments_pb2_grpc.PaymentServiceAsyncStub,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    # Here, not in a fixture: capsys gives each test phase a new stream.
    configure_logging("debug", service="payments", flush_interval=0)
    captured = (await stub.ProcessPayment(request(APPROVED, "ok"))).payment
    errors: list[StatusError] = []
    for card, key in [(DECLINED, "no"), (NOT_LUHN, "bad"), (APPROVED, "down"), (APPROVED, "crash")]:
        with pytest.raises(grpc.RpcError) as caught:
            await stub.ProcessPayment(request(card, key))
        errors.append(StatusError.from_rpc_error(caught.value))
    flush_logs()
    logs = capsys.readouterr().err

    assert captured.card_last4 == "4242"
    assert [error.code for error in errors] == [
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
    ]
    assert '"event": "rpc.unexpected_error"' in logs  # the crash was logged, with its traceback
    assert "INSERT INTO payments" in logs  # SQL and its parameters were logged
    for text in [logs, *(repr(e.to_proto()) for e in errors)]:
        for number in (APPROVED, DECLINED, NOT_LUHN):
            assert number not in text
            assert number[:12] not in text  # not even most of it
        assert not CVC_VALUE.search(text)
