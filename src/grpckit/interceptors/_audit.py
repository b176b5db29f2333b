"""audit: one :class:`AuditRecord` per state-changing call, stored by an :class:`AuditSink`.

Which calls: by default those whose method is not marked
``option idempotency_level = NO_SIDE_EFFECTS;`` in its proto (:func:`state_changing`; a method
without a descriptor in the default pool counts as state-changing). Health and reflection are
never audited. Pass ``match=`` to choose otherwise.

What is recorded, after the call ends (success or failure, including rejections raised by
interceptors after this one, such as authorization): the time (UTC), who (``actor``: the
principal's subject, ``service:<identity>`` when a service called on its own, or
``"anonymous"``; its sorted ``roles`` and ``service_identity``), the full method, the
``resource`` (see :func:`default_resource`), the status code name, the request id and the
caller's IP. Never the request body, tokens or passwords.

The sink is awaited before the call's status goes back to the client, so a success the client
sees is already recorded. A sink that raises does not fail the call: the failure is logged
(``event="audit.append_failed"``, once per burst of failures, then ``audit.recovered`` with the
number of records lost) and counted in ``grpckit_audit_failures_total`` when prometheus-client
is installed.

Place it after ``logging()`` (its request id) and before authentication and authorization, so
rejected calls are recorded with whatever principal was established. Emits no status codes.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from grpckit.auth._principal import Principal
from grpckit.call import CallInfo, Outcome
from grpckit.logs import get_logger
from grpckit.middleware import Interceptor, Matcher, Next, is_builtin
from grpckit.tracing import peer_attributes

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["AuditRecord", "AuditSink", "audit", "default_resource", "state_changing"]

#: Longer identifier values are cut to this many characters in ``resource``.
MAX_VALUE_CHARS = 128
#: Returns the ``resource`` of a finished call.
ResourceFn = Callable[[CallInfo], str]
#: Returns the time of a record (an aware UTC datetime).
Clock = Callable[[], datetime]

_log = get_logger("grpckit.audit")
_NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Who did what to which resource, with which outcome, when. Never holds secrets.

    Example::

        AuditRecord(time=datetime.now(UTC), actor="u-1", roles=("admin",),
                    service_identity=None, method="/shop.users.v1.UserService/DisableUser",
                    resource="user_id=u-2", code="OK", request_id="r-1", peer="10.0.0.7")
    """

    time: datetime
    actor: str
    roles: tuple[str, ...]
    service_identity: str | None
    method: str
    resource: str
    code: str
    request_id: str
    peer: str


class AuditSink(Protocol):
    """Stores audit records durably. ``append`` returns once ``record`` is stored.

    Example::

        class ListSink:
            def __init__(self) -> None:
                self.records: list[AuditRecord] = []

            async def append(self, record: AuditRecord) -> None:
                self.records.append(record)
    """

    async def append(self, record: AuditRecord) -> None:
        """Store ``record``; raise when it could not be stored."""
        ...


def state_changing(call: CallInfo) -> bool:
    """True unless the call's method is marked ``NO_SIDE_EFFECTS`` in its proto (cached).

    Example: ``select(my_interceptor, match=state_changing)``
    """
    return _state_changing(call.full_method)


@functools.lru_cache(maxsize=4096)
def _state_changing(full_method: str) -> bool:
    name = full_method.lstrip("/").replace("/", ".")
    try:
        method = descriptor_pool.Default().FindMethodByName(name)
    except KeyError:
        return True
    return bool(method.GetOptions().idempotency_level != _NO_SIDE_EFFECTS)


def default_resource(call: CallInfo) -> str:
    """What the call acted on: the request's identifiers, and what the call created.

    The request part lists the top-level string fields named ``id`` or ending in ``_id`` that
    are set (``"order_id=o-1,user_id=u-1"``). When the response's first message-typed field
    carries a string ``id`` not already in the request (a created or returned object), it is
    added as ``"<field>.id=<value>"`` (``CreateUserResponse.user`` → ``"user.id=u-9"``).
    Client streams (no single request) give the response part only. Values are cut to
    :data:`MAX_VALUE_CHARS`.

    Example: ``audit(sink, resource=lambda call: default_resource(call) or call.method)``
    """
    parts: list[str] = []
    seen: set[str] = set()
    request = call.request
    if isinstance(request, Message):
        for field, value in request.ListFields():
            if _is_id(field) and (field.name == "id" or field.name.endswith("_id")):
                parts.append(f"{field.name}={_cut(value)}")
                seen.add(value)
    response = call.response
    if isinstance(response, Message):
        created = _created_id(response)
        if created is not None and created[1] not in seen:
            parts.append(f"{created[0]}.id={_cut(created[1])}")
    return ",".join(parts)


def _is_id(field: Any) -> bool:  # a FieldDescriptor (upb's or python's)
    return field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated


def _created_id(response: Message) -> tuple[str, str] | None:
    for field in response.DESCRIPTOR.fields:
        if field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
            continue
        message_type = field.message_type
        id_field = message_type.fields_by_name.get("id") if message_type is not None else None
        if id_field is None or not _is_id(id_field) or not response.HasField(field.name):
            return None
        value = getattr(getattr(response, field.name), "id", "")
        return (field.name, value) if value else None
    return None


def _cut(value: str) -> str:
    return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "…"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _actor(principal: Any) -> tuple[str, tuple[str, ...], str | None]:
    if not isinstance(principal, Principal):
        return "anonymous", (), None
    roles = tuple(sorted(principal.roles))
    if principal.subject:
        return principal.subject, roles, principal.service
    if principal.service is not None:
        return f"service:{principal.service}", roles, principal.service
    return "anonymous", roles, None


def _peer_ip(peer: str) -> str:
    address = peer_attributes(peer).get("network.peer.address")
    return address if isinstance(address, str) else peer


class _Audit:
    __slots__ = ("_clock", "_count_failure", "_lost", "_match", "_resource", "_sink")

    def __init__(
        self,
        sink: AuditSink,
        match: Matcher,
        resource: ResourceFn,
        clock: Clock,
        count_failure: Callable[[], None] | None,
    ) -> None:
        self._sink = sink
        self._match = match
        self._resource = resource
        self._clock = clock
        self._count_failure = count_failure
        self._lost = 0  # records lost in the current burst of sink failures

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        if is_builtin(call) or not self._match(call):
            await next_(call)
            return
        try:
            await next_(call)
        except BaseException as exc:
            await self._append(call, Outcome.of(call, exc).code)
            raise
        await self._append(call, Outcome.of(call, None).code)

    def _record(self, call: CallInfo, code: grpc.StatusCode) -> AuditRecord:
        actor, roles, service_identity = _actor(call.principal)
        return AuditRecord(
            time=self._clock(),
            actor=actor,
            roles=roles,
            service_identity=service_identity,
            method=call.full_method,
            resource=self._resource(call),
            code=code.name,
            request_id=call.request_id,
            peer=_peer_ip(call.peer),
        )

    async def _append(self, call: CallInfo, code: grpc.StatusCode) -> None:
        try:
            await self._sink.append(self._record(call, code))
        except Exception as exc:
            self._failed(call, exc)
            return
        if self._lost:
            _log.warning("audit.recovered", lost=self._lost)
            self._lost = 0

    def _failed(self, call: CallInfo, exc: Exception) -> None:
        if self._count_failure is not None:
            self._count_failure()
        self._lost += 1
        if self._lost == 1:
            _log.error(
                "audit.append_failed",
                method=call.full_method,
                request_id=call.request_id,
                error_type=type(exc).__name__,
                error=str(exc)[:500],
            )

    def __repr__(self) -> str:
        return f"audit({self._sink!r})"


_FAILURES: weakref.WeakKeyDictionary[CollectorRegistry, Any] = weakref.WeakKeyDictionary()
_FAILURES_LOCK = threading.Lock()


def _failure_counter(registry: CollectorRegistry | None) -> Callable[[], None] | None:
    """``inc`` of ``grpckit_audit_failures_total`` in ``registry``; ``None`` without prometheus."""
    try:
        from prometheus_client import Counter
    except ImportError:
        return None
    from grpckit.metrics import default_registry

    target = registry if registry is not None else default_registry()
    with _FAILURES_LOCK:
        counter = _FAILURES.get(target)
        if counter is None:
            counter = _FAILURES[target] = Counter(
                "grpckit_audit_failures",
                "Audit records the audit sink failed to store (the calls themselves went on).",
                registry=target,
            )
    inc: Callable[[], None] = counter.inc
    return inc


def audit(
    sink: AuditSink,
    *,
    match: Matcher | None = None,
    resource: ResourceFn | None = None,
    clock: Clock = _utc_now,
    registry: CollectorRegistry | None = None,
) -> Interceptor:
    """Record every state-changing call in ``sink``, after it ends, before its status is sent.

    ``match`` chooses the audited calls (default :func:`state_changing`; health and reflection
    never), ``resource`` what the call acted on (default :func:`default_resource`), ``clock``
    the record time (aware UTC). Sink failures are counted in ``grpckit_audit_failures_total``
    in ``registry`` (default :func:`grpckit.metrics.default_registry`) when prometheus-client
    is installed.

    Example::

        app = App(interceptors=[recovery(), logging(), metrics(), audit(log), authentication(...)])
    """
    return _Audit(
        sink,
        match if match is not None else state_changing,
        resource if resource is not None else default_resource,
        clock,
        _failure_counter(registry),
    )
