"""Circuit breaker client interceptors: one state machine per target and method.

``closed``: calls pass; each outcome enters a sliding window (the last ``window_calls`` calls
and at most ``window_seconds`` old). When the window holds at least ``minimum_calls`` and the
share of failures reaches ``failure_ratio``, the circuit opens.

``open``: calls fail fast, without touching the network, with UNAVAILABLE, an ``ErrorInfo``
(reason ``CIRCUIT_OPEN``, domain ``grpckit``, metadata ``target`` and ``method``) and a
``RetryInfo`` carrying the rest of the cool-down, readable with
:meth:`grpckit.errors.StatusError.from_rpc_error`. After ``cooldown`` seconds it is half-open.

``half_open``: ``half_open_calls`` probe calls pass (others fail fast). One probe failing
reopens the circuit for another cool-down; all of them succeeding closes it with an empty window.

A failure is a status in ``failure_codes`` (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN,
RESOURCE_EXHAUSTED by default); every other status, caller mistakes such as INVALID_ARGUMENT or
NOT_FOUND included, is a success: the dependency answered. A call cancelled by the caller
counts as nothing. Outcomes of calls started before the last state change are ignored.

Example::

    breaker = CircuitBreaker(BreakerPolicy(cooldown=10.0), target="payments:50051")
    channel = dial("payments:50051", interceptors=breaker.interceptors())
    breaker.state("/shop.payments.v1.PaymentService/Charge")  # "closed" | "open" | "half_open"

The state of every circuit is exported as ``grpckit_client_circuit_state{target,method}`` (0
closed, 1 half-open, 2 open) when prometheus-client is installed (see ``_gauges``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from grpckit.client._call_status import code_now
from grpckit.client._gauges import watch_breaker
from grpckit.client._kinds import Continuation, every_kind
from grpckit.client._rejection import DOMAIN, local_rejection

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "CIRCUIT_OPEN",
    "DEFAULT_FAILURE_CODES",
    "DEFAULT_POLICY",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "circuit_breaker_interceptors",
]

#: ``ErrorInfo.reason`` of a call rejected by an open circuit.
CIRCUIT_OPEN = "CIRCUIT_OPEN"

BreakerState = Literal["closed", "open", "half_open"]
Clock = Callable[[], float]


DEFAULT_FAILURE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_pending: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class BreakerPolicy:
    """When a circuit opens, how long it stays open, how it probes.

    ``window_calls`` / ``window_seconds`` bound the sliding window (``None``: no bound of that
    kind; at least one is required). ``failure_ratio`` in ``(0, 1]``.
    """

    failure_ratio: float = 0.5
    minimum_calls: int = 10
    window_calls: int | None = 100
    window_seconds: float | None = 60.0
    cooldown: float = 5.0
    half_open_calls: int = 1
    failure_codes: frozenset[grpc.StatusCode] = DEFAULT_FAILURE_CODES

    def __post_init__(self) -> None:
        if not 0 < self.failure_ratio <= 1:
            raise ValueError(f"failure_ratio must be in (0, 1]: {self.failure_ratio}")
        if self.minimum_calls < 1:
            raise ValueError("minimum_calls must be >= 1")
        if self.window_calls is None and self.window_seconds is None:
            raise ValueError("set window_calls, window_seconds or both")
        if self.window_calls is not None and self.window_calls < self.minimum_calls:
            raise ValueError("window_calls must be >= minimum_calls")
        if self.window_seconds is not None and self.window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        if self.cooldown < 0:
            raise ValueError("cooldown must be >= 0")
        if self.half_open_calls < 1:
            raise ValueError("half_open_calls must be >= 1")
        if grpc.StatusCode.OK in self.failure_codes:
            raise ValueError("OK cannot be a failure code")
        object.__setattr__(self, "failure_codes", frozenset(self.failure_codes))


#: ``BreakerPolicy()``: the default policy.
DEFAULT_POLICY = BreakerPolicy()


@dataclass(frozen=True)
class _Ticket:
    """An admitted call: the circuit generation it was admitted in, and whether it probes."""

    generation: int
    probe: bool


class _Circuit:
    """The state machine of one method."""

    __slots__ = (
        "admitted",
        "generation",
        "opened_at",
        "policy",
        "state",
        "successes",
        "window",
    )

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state: BreakerState = "closed"
        self.generation = 0
        self.window: deque[tuple[float, bool]] = deque(maxlen=policy.window_calls)
        self.opened_at = 0.0
        self.admitted = 0  # half-open probes admitted and not given back
        self.successes = 0  # half-open probes that succeeded

    def refresh(self, now: float) -> None:
        if self.peek(now) != self.state:
            self._move("half_open", now)

    def peek(self, now: float) -> BreakerState:
        """The state at ``now`` without changing anything (safe from a scrape thread)."""
        if self.state == "open" and now - self.opened_at >= self.policy.cooldown:
            return "half_open"
        return self.state

    def remaining(self, now: float) -> float:
        return max(self.policy.cooldown - (now - self.opened_at), 0.0)

    def admit(self, now: float) -> _Ticket | None:
        self.refresh(now)
        if self.state == "closed":
            return _Ticket(self.generation, probe=False)
        if self.state == "half_open" and self.admitted < self.policy.half_open_calls:
            self.admitted += 1
            return _Ticket(self.generation, probe=True)
        return None

    def record(self, ticket: _Ticket, failed: bool | None, now: float) -> None:
        """``failed``: ``None`` for a call that counts as nothing (cancelled, not started)."""
        if ticket.generation != self.generation:
            return
        if ticket.probe:
            if failed is None:
                self.admitted -= 1
            elif failed:
                self._move("open", now)
            else:
                self.successes += 1
                if self.successes >= self.policy.half_open_calls:
                    self._move("closed", now)
            return
        if failed is None:
            return
        self.window.append((now, failed))
        self._trim(now)
        total = len(self.window)
        if total >= self.policy.minimum_calls:
            failures = sum(1 for _, bad in self.window if bad)
            if failures >= self.policy.failure_ratio * total:
                self._move("open", now)

    def _trim(self, now: float) -> None:
        if self.policy.window_seconds is None:
            return
        horizon = now - self.policy.window_seconds
        while self.window and self.window[0][0] < horizon:
            self.window.popleft()

    def _move(self, state: BreakerState, now: float) -> None:
        self.state = state
        self.generation += 1
        self.admitted = 0
        self.successes = 0
        self.window.clear()
        if state == "open":
            self.opened_at = now


class CircuitBreaker:
    """Circuits for the methods of one ``target``; hand :meth:`interceptors` to ``dial``.

    Its states appear in ``registry`` (default: :func:`grpckit.metrics.default_registry` when
    prometheus-client is installed) as ``grpckit_client_circuit_state{target,method}``.
    """

    def __init__(
        self,
        policy: BreakerPolicy = DEFAULT_POLICY,
        *,
        target: str,
        clock: Clock = time.monotonic,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.policy = policy
        self.target = target
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}
        watch_breaker(self, registry)

    def state(self, method: str) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half_open"`` for ``method`` (``/pkg.Service/Method``).

        An open circuit whose cool-down has passed reads ``"half_open"``.
        """
        circuit = self._circuits.get(_normalize(method))
        if circuit is None:
            return "closed"
        circuit.refresh(self._clock())
        return circuit.state

    def states(self) -> dict[str, BreakerState]:
        """The state of every method called so far (for a metric); reads, never changes."""
        now = self._clock()
        return {method: circuit.peek(now) for method, circuit in list(self._circuits.items())}

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """The four grpc.aio client interceptors (one per RPC kind) guarding the calls."""
        interceptors: list[Any] = [  # grpc-stubs leaves grpc.aio.ClientInterceptor opaque
            *every_kind(self._intercept, breaker=self),
        ]
        return interceptors

    def _circuit(self, method: str) -> _Circuit:
        circuit = self._circuits.get(method)
        if circuit is None:
            circuit = self._circuits[method] = _Circuit(self.policy)
        return circuit

    async def _intercept(self, continuation: Continuation, details: Any, arg: Any) -> Any:
        method = _normalize(details.method)
        circuit = self._circuit(method)
        now = self._clock()
        ticket = circuit.admit(now)
        if ticket is None:
            raise self._rejection(method, circuit, now)
        try:
            call = await continuation(details, arg)
        except grpc.aio.AioRpcError as exc:
            circuit.record(ticket, self._failed(exc.code()), self._clock())
            raise
        except BaseException:
            circuit.record(ticket, None, self._clock())
            raise
        call.add_done_callback(functools.partial(self._done, circuit, ticket))
        return call

    def _done(self, circuit: _Circuit, ticket: _Ticket, call: Any) -> None:
        code = code_now(call)
        if code is None:  # not readable without awaiting: finish on the loop
            task = asyncio.ensure_future(self._done_later(circuit, ticket, call))
            _pending.add(task)
            task.add_done_callback(_pending.discard)
            return
        circuit.record(ticket, self._failed(code), self._clock())

    async def _done_later(self, circuit: _Circuit, ticket: _Ticket, call: Any) -> None:
        code = await call.code()
        circuit.record(ticket, self._failed(code), self._clock())

    def _failed(self, code: grpc.StatusCode) -> bool | None:
        if code is grpc.StatusCode.CANCELLED:
            return None
        return code in self.policy.failure_codes

    def _rejection(self, method: str, circuit: _Circuit, now: float) -> grpc.aio.AioRpcError:
        info = error_details_pb2.ErrorInfo(
            reason=CIRCUIT_OPEN,
            domain=DOMAIN,
            metadata={"target": self.target, "method": method},
        )
        details: list[Any] = [info]
        if circuit.state == "open":
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(round(circuit.remaining(now) * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
            message = f"circuit open for {method} on {self.target}"
        else:
            message = f"circuit half-open for {method} on {self.target}: probe in flight"
        return local_rejection(
            grpc.StatusCode.UNAVAILABLE,
            message,
            *details,
            source=f"circuit breaker: {CIRCUIT_OPEN}",
        )


def _normalize(method: str | bytes) -> str:
    name = method.decode() if isinstance(method, bytes) else method
    return name if name.startswith("/") else f"/{name}"


def circuit_breaker_interceptors(
    policy: BreakerPolicy = DEFAULT_POLICY,
    *,
    target: str,
    clock: Clock = time.monotonic,
    registry: CollectorRegistry | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """The four interceptors of a new :class:`CircuitBreaker` for ``target``.

    Each interceptor's ``.breaker`` is that breaker (for :meth:`CircuitBreaker.state`); build
    the :class:`CircuitBreaker` yourself to keep a handle on it.

    Example::

        channel = dial(target, interceptors=circuit_breaker_interceptors(target=target))
    """
    return CircuitBreaker(policy, target=target, clock=clock, registry=registry).interceptors()
