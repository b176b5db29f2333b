"""The card number and CVC of ProcessOrder never reach a log record, the journal or an error.

Sagas run to every outcome (captured, declined, payment unavailable, a crash in the payment
step), with the logs captured with their tracebacks rendered.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from grpckit import StatusError
from shop.gateway.domain import Card
from tests.shop.gateway.gateway_fakes import DECLINED_CARD, GOOD_CARD, World, unavailable

CVC = "7319"
#: The CVC as a value of its own (not inside an id, a timestamp or a duration).
CVC_VALUE = re.compile(rf"(?<![\w.:-]){CVC}(?![\w.:-])")


def journal(directory: Path) -> str:
    """Every byte of the saga journal's SQLite files (database and write-ahead log)."""
    return b"".join(path.read_bytes() for path in directory.glob("gateway.db*")).decode("latin-1")


async def test_no_card_number_or_cvc_in_logs_journal_or_errors(
    world: World, tmp_path: Path
) -> None:
    world.peers.fail_before["process_payment"] += [
        RuntimeError("the payments client has a bug"),  # type: ignore[list-item]
        unavailable("payments down"),
    ]
    errors: list[StatusError] = []
    with capture_logs(processors=[structlog.processors.format_exc_info]) as logs:
        for key, number in [("crash", GOOD_CARD), ("down", GOOD_CARD), ("no", DECLINED_CARD)]:
            order = replace(world.request(key=key), card=Card(number, 12, 2031, CVC))
            with pytest.raises(StatusError) as caught:
                await world.saga.process(order)
            errors.append(caught.value)
        order = replace(world.request(key="ok"), card=Card(GOOD_CARD, 12, 2031, CVC))
        paid = await world.saga.process(order)

    assert paid.payment.card_last4 == GOOD_CARD[-4:]
    assert [e.code.name for e in errors] == ["INTERNAL", "UNAVAILABLE", "FAILED_PRECONDITION"]
    crashes = [r for r in logs if r["event"] == "saga step crashed"]
    assert len(crashes) == 1 and "RuntimeError" in crashes[0]["exception"]
    stored = journal(tmp_path)
    assert world.user_id in stored  # the sagas were journaled there
    texts = [repr(logs), stored, *(repr(e.to_proto()) for e in errors)]
    for text in texts:
        for number in (GOOD_CARD, DECLINED_CARD):
            assert number not in text
        assert not CVC_VALUE.search(text)
