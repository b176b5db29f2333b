"""validation: check requests against the protovalidate rules declared in their protos.

Rules are ``buf.validate`` options on the request messages (``string.email``, ``int32.gte``,
``repeated.min_items`` ...), enforced by the ``protovalidate`` package, imported when
:func:`validation` is first called (``import grpckit`` works without it).

Emits:

* INVALID_ARGUMENT with a ``google.rpc.BadRequest`` holding one field violation per broken rule
  (every violation, not the first), fields named by protovalidate's paths: ``email``,
  ``items[0].quantity``, ``payment_method.card_number``, ``labels["key"]``; a message-level
  rule has an empty field. Descriptions are the rules' messages: never the offending value.
* INTERNAL "internal error" with ``ErrorInfo(reason="INTERNAL", metadata={"error_id"})`` when
  the rules themselves are broken (a ``CompilationError`` or ``EvaluationError``: a server
  bug), logged once as ``validation.rules_error`` with that id.

Unary and server-streaming requests are checked before the handler runs; each message of a
client or bidi stream is checked as the handler reads it (the handler's request iterator raises
the error). Message types whose schema declares no rule at all are skipped without calling
the validator (the verdict is cached per type).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from grpckit.call import CallInfo
from grpckit.errors import StatusError, internal, invalid_argument
from grpckit.logs import get_logger
from grpckit.middleware import Interceptor, Next

if TYPE_CHECKING:
    from protovalidate import Violation

__all__ = ["RuleChecker", "field_violations", "validation"]

#: The options that declare protovalidate rules (buf/validate/validate.proto).
_RULE_OPTIONS = frozenset({"buf.validate.field", "buf.validate.message", "buf.validate.oneof"})


class RuleChecker(Protocol):
    """What the interceptor needs of a validator; ``protovalidate.Validator`` is one.

    Example: ``validation(protovalidate.Validator())`` (share one validator between servers).
    """

    def collect_violations(self, message: Message, /) -> list[Violation]:
        """Every rule ``message`` breaks; raises ``CompilationError`` for broken rules."""
        ...


class _Validation:
    __slots__ = ("_checker", "_has_rules", "_log", "_rule_errors")

    def __init__(self, checker: RuleChecker, logger: structlog.stdlib.BoundLogger) -> None:
        from protovalidate import CompilationError, EvaluationError

        self._checker = checker
        self._log = logger
        self._rule_errors: tuple[type[Exception], ...] = (CompilationError, EvaluationError)
        self._has_rules: dict[type[Any], bool] = {}

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        if call.requests is None:
            self.check(call, call.request)
        else:
            call.listen(self)
        await next_(call)

    def on_receive(self, call: CallInfo, message: Any) -> None:
        self.check(call, message)

    def on_send(self, call: CallInfo, message: Any) -> None:
        pass

    def check(self, call: CallInfo, message: Any) -> None:
        """Raise INVALID_ARGUMENT when ``message`` breaks a rule (INTERNAL for broken rules)."""
        cls = type(message)
        has_rules = self._has_rules.get(cls)
        if has_rules is None:
            has_rules = isinstance(message, Message) and declares_rules(
                cast(Descriptor, message.DESCRIPTOR)
            )
            self._has_rules[cls] = has_rules
        if not has_rules:
            return
        try:
            violations = self._checker.collect_violations(message)
        except self._rule_errors as exc:
            raise self._rules_error(call, message, exc) from None
        if violations:
            raise _invalid(message, violations)

    def _rules_error(self, call: CallInfo, message: Message, exc: Exception) -> StatusError:
        error_id = uuid.uuid4().hex
        self._log.error(
            "validation.rules_error",
            error_id=error_id,
            service=call.service,
            method=call.method,
            request_id=call.request_id,
            message_type=message.DESCRIPTOR.full_name,
            error=f"{type(exc).__name__}: {exc}",
        )
        return internal(error_id=error_id)

    def __repr__(self) -> str:
        return "validation()"


def _invalid(message: Message, violations: Sequence[Violation]) -> StatusError:
    pairs = field_violations(violations)
    field, description = pairs[0]
    first = f"{field}: {description}" if field else description
    more = f" (and {len(pairs) - 1} more)" if len(pairs) > 1 else ""
    return invalid_argument(f"invalid {message.DESCRIPTOR.name}: {first}{more}", pairs)


def field_violations(violations: Sequence[Violation]) -> list[tuple[str, str]]:
    """``(field path, description)`` pairs of protovalidate violations, in their order.

    Example::

        pairs = field_violations(protovalidate.collect_violations(request))
        # [("items[0].quantity", "must be greater than or equal to 1")]
    """
    pairs = []
    for violation in violations:
        proto = violation.proto
        description = proto.message or proto.rule_id
        if proto.for_key:
            description = f"key {description}"
        elements = proto.field.elements if proto.field is not None else ()
        pairs.append((field_path(elements), description))
    return pairs


def field_path(elements: Sequence[Any]) -> str:
    """``items[0].quantity`` from ``buf.validate.FieldPathElement`` messages."""
    parts: list[str] = []
    for element in elements:
        name = element.field_name
        parts.append(f".{name}" if parts else name)
        subscript = getattr(element, "subscript", None)
        if subscript is None:
            continue
        key = subscript.value
        if subscript.field == "string_key":
            parts.append(f'["{_quoted(key)}"]')
        elif subscript.field == "bool_key":
            parts.append("[true]" if key else "[false]")
        else:  # index, int_key, uint_key
            parts.append(f"[{key}]")
    return "".join(parts)


def _quoted(key: str) -> str:
    return key.replace("\\", "\\\\").replace('"', '\\"')


def declares_rules(descriptor: Descriptor) -> bool:
    """True when ``descriptor`` or a message reachable from its fields declares a rule.

    Example: ``declares_rules(ping_pb2.PingRequest.DESCRIPTOR)`` is ``False``.
    """
    return _declares_rules(descriptor, set())


def _declares_rules(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    if _has_rule_option(descriptor):
        return True
    if any(_has_rule_option(oneof) for oneof in descriptor.oneofs):
        return True
    for field in descriptor.fields:
        if _has_rule_option(field):
            return True
        if field.message_type is not None and _declares_rules(field.message_type, seen):
            return True
    return False


def _has_rule_option(described: Any) -> bool:
    if not described.has_options:
        return False
    return any(
        option.is_extension and option.full_name in _RULE_OPTIONS
        for option, _ in described.GetOptions().ListFields()
    )


def validation(
    validator: RuleChecker | None = None, *, logger: structlog.stdlib.BoundLogger | None = None
) -> Interceptor:
    """Reject requests that break their protos' ``buf.validate`` rules with INVALID_ARGUMENT.

    ``validator`` defaults to a new ``protovalidate.Validator()`` (it caches compiled rules:
    share one). Place it last, right before the handler, after the observers and the guards.

    Example::

        from grpckit.interceptors import deadlines, logging, recovery, validation

        app = App(interceptors=[recovery(), logging(), deadlines(), validation()])
    """
    if validator is None:
        import protovalidate

        validator = protovalidate.Validator()
    return _Validation(
        validator, logger if logger is not None else get_logger("grpckit.validation")
    )
