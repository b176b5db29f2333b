"""service_config: the JSON it builds, its validation, and grpc applying it on a real server."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from grpckit.client import dial
from grpckit.client._service_config import (
    MethodPolicy,
    RetryPolicy,
    format_duration,
    service_config,
    service_config_options,
)
from grpckit.testing import PingServicer, expect_status, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

PING = "grpckit.testing.v1.PingService"


def test_full_config_json() -> None:
    config = json.loads(
        service_config(
            methods={
                f"{PING}/Ping": MethodPolicy(
                    timeout=0.1,
                    wait_for_ready=True,
                    retry=RetryPolicy(
                        max_attempts=4,
                        initial_backoff=0.05,
                        max_backoff=2,
                        backoff_multiplier=1.5,
                        retryable_codes=(
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                        ),
                    ),
                ),
                "shop.Other": MethodPolicy(timeout=3),
            },
            default=MethodPolicy(timeout=5),
            load_balancing="round_robin",
            health_check_service="",
            retry_throttling=(10, 0.1),
        )
    )
    assert config == {
        "methodConfig": [
            {
                "name": [{"service": PING, "method": "Ping"}],
                "timeout": "0.100s",
                "waitForReady": True,
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.050s",
                    "maxBackoff": "2.000s",
                    "backoffMultiplier": 1.5,
                    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
                },
            },
            {"name": [{"service": "shop.Other"}], "timeout": "3.000s"},
            {"name": [{}], "timeout": "5.000s"},
        ],
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": ""},
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }


def test_empty_config() -> None:
    assert service_config() == "{}"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.1, "0.100s"),
        (1, "1.000s"),
        (0.0001, "0.000100s"),
        (3e-9, "0.000000003s"),
        (1.25, "1.250s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "make",
    [
        lambda: RetryPolicy(max_attempts=1),
        lambda: RetryPolicy(max_attempts=6),
        lambda: RetryPolicy(initial_backoff=0),
        lambda: RetryPolicy(initial_backoff=2, max_backoff=1),
        lambda: RetryPolicy(backoff_multiplier=-1),
        lambda: RetryPolicy(retryable_codes=()),
        lambda: RetryPolicy(retryable_codes=(grpc.StatusCode.OK,)),
        lambda: MethodPolicy(timeout=0),
        lambda: service_config(load_balancing="random"),
        lambda: service_config(health_check_service="x"),  # needs round_robin
        lambda: service_config(retry_throttling=(0, 0.1)),
        lambda: service_config(retry_throttling=(1001, 0.1)),
        lambda: service_config(retry_throttling=(10, 0)),
        lambda: service_config(methods={"a/b/c": MethodPolicy()}),
        lambda: service_config(methods={"a/": MethodPolicy()}),
        lambda: service_config(methods={"/a/b": MethodPolicy(), "a/b": MethodPolicy()}),
    ],
)
def test_invalid(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


class FlakyPing(PingServicer):
    """Fails the first ``failures`` attempts of every message with ``code``, then answers."""

    def __init__(self, failures: int, code: grpc.StatusCode) -> None:
        super().__init__()
        self.failures = failures
        self.code = code
        self.attempts: dict[str, int] = {}

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        seen = self.attempts[request.message] = self.attempts.get(request.message, 0) + 1
        if seen <= self.failures:
            await context.abort(self.code, f"attempt {seen}")
        return await super().Ping(request, context)


def _retrying(address: str) -> grpc.aio.Channel:
    config = service_config(
        methods={
            PING: MethodPolicy(
                retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01)
            )
        }
    )
    return dial(address, options=service_config_options(config))


async def test_unavailable_is_retried_transparently() -> None:
    servicer = FlakyPing(failures=2, code=grpc.StatusCode.UNAVAILABLE)
    async with serve_in_process(servicer) as server, _retrying(server.address) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        reply = await stub.Ping(ping_pb2.PingRequest(message="a"))
    assert reply.message == "a"
    assert servicer.attempts == {"a": 3}


async def test_attempts_are_bounded() -> None:
    servicer = FlakyPing(failures=5, code=grpc.StatusCode.UNAVAILABLE)
    async with serve_in_process(servicer) as server, _retrying(server.address) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        await expect_status(
            stub.Ping(ping_pb2.PingRequest(message="b")), grpc.StatusCode.UNAVAILABLE
        )
    assert servicer.attempts == {"b": 3}


async def test_non_retryable_code_is_not_retried() -> None:
    servicer = FlakyPing(failures=2, code=grpc.StatusCode.INTERNAL)
    async with serve_in_process(servicer) as server, _retrying(server.address) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        await expect_status(stub.Ping(ping_pb2.PingRequest(message="c")), grpc.StatusCode.INTERNAL)
    assert servicer.attempts == {"c": 1}


async def test_method_timeout_applies() -> None:
    config = service_config(methods={f"{PING}/Ping": MethodPolicy(timeout=0.05)})
    async with (
        serve_in_process(PingServicer()) as server,
        dial(
            server.address, default_timeout=None, options=service_config_options(config)
        ) as channel,
    ):
        stub = ping_pb2_grpc.PingServiceStub(channel)
        await expect_status(
            stub.Ping(ping_pb2.PingRequest(message="slow", sleep_ms=2000)),
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
