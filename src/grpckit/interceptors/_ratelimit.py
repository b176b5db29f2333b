"""rate_limit: reject calls over a :class:`~grpckit.ratelimit.Rule`, per key, before the handler.

Emits:

* RESOURCE_EXHAUSTED "rate limit exceeded" with ``ErrorInfo(reason="RATE_LIMITED")``,
  ``RetryInfo`` (``retry_delay``: when the same call could succeed) and ``QuotaFailure`` with
  one violation: ``subject`` is the key (``ip:10.0.0.7``, ``method:/pkg.Svc/M``,
  ``x-user-id:42``), ``description`` the rule (``"10 requests per 1s (token_bucket)"``).
  The handler does not run and the call spends no budget.

Errors of the limiter itself propagate (``recovery()`` turns them into INTERNAL); the Redis
limiter does not raise when Redis is down, it falls back to a local limiter. Health and
reflection are never limited.

Rules: a mapping from ``"/pkg.Service/Method"``, ``"/pkg.Service/*"`` or ``"*"`` (the default)
to a :class:`~grpckit.ratelimit.Rule`, most specific first; a method with no rule is not
limited. A method matched by name has its own budgets; ``"/pkg.Service/*"`` and ``"*"`` share
one budget per key among the methods they cover (key by :func:`by_method` for one budget per
method). Or a function ``call -> Rule | None``, whose budgets are keyed by the key alone.

Stack two interceptors to limit one method by two keys (``Login`` per email and per IP).
Place it after ``metrics()`` (rejections are counted) and before authorization and
``validation()`` (rejected calls cost nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from urllib.parse import unquote

from grpckit.call import CallInfo
from grpckit.errors import resource_exhausted
from grpckit.middleware import Interceptor, Next, is_builtin
from grpckit.ratelimit import Limiter, Rule

__all__ = ["KeyFn", "RuleFn", "by_metadata", "by_method", "by_peer_ip", "rate_limit"]

#: Names the budget a call spends from.
KeyFn = Callable[[CallInfo], str]
#: Chooses the rule of a call (``None``: not limited).
RuleFn = Callable[[CallInfo], Rule | None]

DEFAULT_RULE = "*"
REASON = "RATE_LIMITED"


def by_peer_ip(call: CallInfo) -> str:
    """``ip:<address>`` of the caller (port dropped); ``peer:<peer>`` for other transports.

    Behind a proxy this is the proxy's address: key by a trusted header instead.
    """
    peer = call.peer
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        return "ip:" + rest.rpartition(":")[0]
    if scheme == "ipv6":
        rest = unquote(rest)  # ipv6:[::1]:5555, sometimes as ipv6:%5B::1%5D:5555
        if rest.startswith("[") and "]" in rest:
            return "ip:" + rest[1 : rest.index("]")]
        return "ip:" + rest
    return "peer:" + peer


def by_method(call: CallInfo) -> str:
    """``method:/pkg.Service/Method``: one budget per method, shared by all callers."""
    return "method:" + call.full_method


def by_metadata(name: str, *, fallback: KeyFn = by_peer_ip) -> KeyFn:
    """``<name>:<value>`` of the first ``name`` metadata value; ``fallback`` when it is absent.

    Only for metadata the server can trust (set by an authenticating proxy or interceptor):
    a client choosing the value chooses its budget. Example: ``by_metadata("x-user-id")``
    """
    header = name.lower()

    def key(call: CallInfo) -> str:
        value = call.header(header)
        if value is None or value == "" or value == b"":
            return fallback(call)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return f"{header}:{value}"

    key.__name__ = key.__qualname__ = f"by_metadata({name!r})"
    return key


class _RateLimit:
    __slots__ = ("_cache", "_key", "_limiter", "_rule_fn", "_rules", "domain")

    def __init__(
        self,
        limiter: Limiter,
        rules: Mapping[str, Rule] | RuleFn,
        key: KeyFn,
        domain: str,
    ) -> None:
        self._limiter = limiter
        self._key = key
        self.domain = domain
        self._rules: dict[str, Rule] | None = None
        self._rule_fn: RuleFn | None = None
        self._cache: dict[str, tuple[str, Rule] | None] = {}
        if callable(rules):
            self._rule_fn = rules
        else:
            for pattern, rule in rules.items():
                if not (pattern == DEFAULT_RULE or pattern.startswith("/")):
                    raise ValueError(
                        f"rule key {pattern!r}: expected '/pkg.Service/Method', "
                        "'/pkg.Service/*' or '*'"
                    )
                if not isinstance(rule, Rule):
                    raise TypeError(f"rule for {pattern!r} is not a Rule: {rule!r}")
            self._rules = dict(rules)

    def _resolve(self, call: CallInfo) -> tuple[str, Rule] | None:
        if self._rule_fn is not None:
            rule = self._rule_fn(call)
            return None if rule is None else ("", rule)
        try:
            return self._cache[call.full_method]
        except KeyError:
            pass
        assert self._rules is not None
        found: tuple[str, Rule] | None = None
        for pattern in (call.full_method, f"/{call.service}/*", DEFAULT_RULE):
            rule = self._rules.get(pattern)
            if rule is not None:
                found = (pattern, rule)
                break
        if len(self._cache) < 10_000:  # method names come from the registered services
            self._cache[call.full_method] = found
        return found

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        resolved = None if is_builtin(call) else self._resolve(call)
        if resolved is not None:
            scope, rule = resolved
            subject = self._key(call)
            decision = await self._limiter.acquire(f"{scope}|{subject}" if scope else subject, rule)
            if not decision.allowed:
                retry_after = decision.retry_after if math.isfinite(decision.retry_after) else None
                raise resource_exhausted(
                    "rate limit exceeded",
                    retry_after=retry_after,
                    quota_violations=[(subject, rule.describe())],
                    reason=REASON,
                    domain=self.domain,
                )
        await next_(call)

    def __repr__(self) -> str:
        return f"rate_limit({self._limiter!r}, key={getattr(self._key, '__name__', self._key)})"


def rate_limit(
    limiter: Limiter,
    rules: Mapping[str, Rule] | RuleFn,
    key: KeyFn = by_peer_ip,
    *,
    domain: str = "",
) -> Interceptor:
    """Spend one unit of the caller's budget per call; over the limit, RESOURCE_EXHAUSTED.

    ``rules``: ``{"/pkg.Svc/Method": Rule, "/pkg.Svc/*": Rule, "*": Rule}`` or a function of
    the call; ``key``: whose budget (:func:`by_peer_ip`, :func:`by_method`,
    :func:`by_metadata`); ``domain``: the ``ErrorInfo.domain`` of the rejection.

    Example::

        limiter = MemoryLimiter()  # or RedisLimiter(redis_client) to share across processes
        app = App(interceptors=[
            recovery(), logging(), metrics(),
            rate_limit(limiter, {"/shop.users.v1.UserService/Login": Rule(5, 60.0),
                                 "*": Rule(100, 1.0, burst=200)}),
        ])
    """
    return _RateLimit(limiter, rules, key, domain)
