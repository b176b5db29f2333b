from __future__ import annotations

import json
import logging as stdlib_logging
from collections.abc import Iterator

import pytest
import structlog

from grpckit import configure_logging, get_logger


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = stdlib_logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.mark.usefixtures("restore_logging")
def test_one_json_object_per_line_with_standard_keys(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", service="orders")
    get_logger("orders.store", shard=3).info("order.created", order_id="o-1")
    get_logger("orders.store").debug("hidden")
    stdlib_logging.getLogger("plain").warning("from stdlib %s", "too")
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "order.created"
    assert first["level"] == "info"
    assert first["logger"] == "orders.store"
    assert first["service"] == "orders"
    assert (first["order_id"], first["shard"]) == ("o-1", 3)
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert second["event"] == "from stdlib too"
    assert (second["level"], second["logger"]) == ("warning", "plain")


@pytest.mark.usefixtures("restore_logging")
def test_exceptions_are_rendered_in_the_record(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    try:
        raise ValueError("boom")
    except ValueError:
        get_logger("t").exception("failed")
    [record] = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    assert record["level"] == "error"
    assert "ValueError: boom" in record["exception"]
