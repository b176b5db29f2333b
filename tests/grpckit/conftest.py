"""Fixtures for the grpckit tests: a Ping service behind an in-process App."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import structlog

from grpckit.testing import PingServicer, TestServer, serve_in_process


@pytest.fixture
def servicer() -> PingServicer:
    return PingServicer()


@pytest.fixture
async def server(servicer: PingServicer) -> AsyncIterator[TestServer]:
    async with serve_in_process(servicer) as running:
        yield running


@pytest.fixture(autouse=True)
def _plain_structlog() -> None:
    """Undo configure_logging() from other tests so capture_logs() sees every record."""
    structlog.reset_defaults()
