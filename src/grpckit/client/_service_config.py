"""service_config: grpc's JSON service config (per-method timeouts, retries, balancing).

grpcio implements timeouts, ``waitForReady``, transparent retries with exponential backoff and
jitter, retry throttling, ``round_robin`` and client-side health checking natively; this module
only builds and validates the JSON that turns them on. Pass it as the channel option
``grpc.service_config`` together with ``grpc.enable_retries`` (see :func:`service_config_options`).

Example::

    config = service_config(
        methods={"shop.catalog.v1.CatalogService": MethodPolicy(timeout=2.0, retry=RetryPolicy())},
        load_balancing="round_robin",
        health_check_service="",
        retry_throttling=(10, 0.1),
    )
    channel = dial("dns:///catalog:50051", options=service_config_options(config))
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

__all__ = ["MethodPolicy", "RetryPolicy", "service_config", "service_config_options"]

_MAX_ATTEMPTS = 5  # grpc core caps maxAttempts at 5
_LB_POLICIES = frozenset({"round_robin", "pick_first"})


@dataclass(frozen=True)
class RetryPolicy:
    """grpc's ``retryPolicy``: attempts (2..5, the first call included), backoff, codes.

    The n-th retry waits a random time in ``[0, min(initial_backoff * multiplier**(n-1),
    max_backoff)]`` (grpc's jitter). Only ``retryable_codes`` are retried, and only while the
    server has not sent response headers.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 1.0
    backoff_multiplier: float = 2.0
    retryable_codes: Sequence[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE,)

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= _MAX_ATTEMPTS:
            raise ValueError(f"max_attempts must be in 2..{_MAX_ATTEMPTS}: {self.max_attempts}")
        _positive("initial_backoff", self.initial_backoff)
        _positive("max_backoff", self.max_backoff)
        _positive("backoff_multiplier", self.backoff_multiplier)
        if self.max_backoff < self.initial_backoff:
            raise ValueError("max_backoff must be >= initial_backoff")
        if not self.retryable_codes:
            raise ValueError("retryable_codes must not be empty")
        if grpc.StatusCode.OK in self.retryable_codes:
            raise ValueError("OK is not a retryable code")
        object.__setattr__(self, "retryable_codes", tuple(dict.fromkeys(self.retryable_codes)))

    def to_json(self) -> dict[str, Any]:
        """The ``retryPolicy`` object."""
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": format_duration(self.initial_backoff),
            "maxBackoff": format_duration(self.max_backoff),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": [code.name for code in self.retryable_codes],
        }


@dataclass(frozen=True)
class MethodPolicy:
    """One ``methodConfig`` entry: ``timeout`` (seconds), ``wait_for_ready``, ``retry``.

    ``None`` leaves the field out (grpc's default applies).
    """

    timeout: float | None = None
    wait_for_ready: bool | None = None
    retry: RetryPolicy | None = field(default=None)

    def __post_init__(self) -> None:
        if self.timeout is not None:
            _positive("timeout", self.timeout)

    def to_json(self, names: list[dict[str, str]]) -> dict[str, Any]:
        """The ``methodConfig`` object for ``names``."""
        entry: dict[str, Any] = {"name": names}
        if self.timeout is not None:
            entry["timeout"] = format_duration(self.timeout)
        if self.wait_for_ready is not None:
            entry["waitForReady"] = self.wait_for_ready
        if self.retry is not None:
            entry["retryPolicy"] = self.retry.to_json()
        return entry


def service_config(
    *,
    methods: Mapping[str, MethodPolicy] | None = None,
    default: MethodPolicy | None = None,
    load_balancing: str | None = None,
    health_check_service: str | None = None,
    retry_throttling: tuple[int, float] | None = None,
) -> str:
    """grpc's JSON service config.

    ``methods`` keys name a whole service (``"pkg.Service"``) or one method
    (``"pkg.Service/Method"``, a leading ``/`` allowed); ``default`` applies to every other
    method. ``load_balancing`` is ``"round_robin"`` or ``"pick_first"``.
    ``health_check_service`` turns on client-side health checking (``grpc.health.v1``; ``""``
    is the server's overall health), which only takes effect with ``round_robin``.
    ``retry_throttling`` is ``(max_tokens, token_ratio)``: retries stop while the token count
    is below half of ``max_tokens`` (each failure costs 1, each success returns
    ``token_ratio``). Raises ``ValueError`` for what grpc would reject or silently ignore.
    """
    config: dict[str, Any] = {}
    method_configs: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for key, policy in (methods or {}).items():
        name = _parse_name(key)
        pair = (name["service"], name.get("method", ""))
        if pair in seen:
            raise ValueError(f"method {key!r} configured twice")
        seen.add(pair)
        method_configs.append(policy.to_json([name]))
    if default is not None:
        method_configs.append(default.to_json([{}]))
    if method_configs:
        config["methodConfig"] = method_configs
    if load_balancing is not None:
        if load_balancing not in _LB_POLICIES:
            raise ValueError(f"load_balancing must be one of {sorted(_LB_POLICIES)}")
        config["loadBalancingConfig"] = [{load_balancing: {}}]
    if health_check_service is not None:
        if load_balancing != "round_robin":
            raise ValueError("client-side health checking needs load_balancing='round_robin'")
        config["healthCheckConfig"] = {"serviceName": health_check_service}
    if retry_throttling is not None:
        max_tokens, token_ratio = retry_throttling
        if not 0 < max_tokens <= 1000:
            raise ValueError(f"retry_throttling max_tokens must be in 1..1000: {max_tokens}")
        _positive("retry_throttling token_ratio", token_ratio)
        config["retryThrottling"] = {
            "maxTokens": max_tokens,
            "tokenRatio": round(token_ratio, 3),
        }
    return json.dumps(config, separators=(",", ":"))


def service_config_options(config: str) -> list[tuple[str, Any]]:
    """The channel options applying ``config``: ``grpc.service_config`` + ``grpc.enable_retries``.

    ``grpc.service_config_disable_resolution`` is set too, so a DNS TXT record cannot replace
    the config.
    """
    return [
        ("grpc.service_config", config),
        ("grpc.enable_retries", 1),
        ("grpc.service_config_disable_resolution", 1),
    ]


def format_duration(seconds: float) -> str:
    """A protobuf JSON ``Duration``: ``0.1`` -> ``"0.100s"`` (3, 6 or 9 fractional digits)."""
    nanos = round(seconds * 1e9)
    whole, frac = divmod(nanos, 1_000_000_000)
    if frac % 1_000_000 == 0:
        return f"{whole}.{frac // 1_000_000:03d}s"
    if frac % 1_000 == 0:
        return f"{whole}.{frac // 1_000:06d}s"
    return f"{whole}.{frac:09d}s"


def _parse_name(key: str) -> dict[str, str]:
    parts = key.removeprefix("/").split("/")
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"method name must be 'pkg.Service' or 'pkg.Service/Method': {key!r}")
    return {"service": parts[0], "method": parts[1]} if len(parts) == 2 else {"service": parts[0]}


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number: {value}")
