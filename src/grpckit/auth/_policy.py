"""Access policies: who may call each method, declared once in the protos and enforced here.

A method's policy is its ``(grpckit.auth.v1.access)`` option (see
``proto/grpckit/api/auth/v1/access.proto``); :func:`authorization` reads it from the descriptor
pool the first time a method is called and denies methods that declare none.

Example (proto)::

    rpc CreateProduct(CreateProductRequest) returns (CreateProductResponse) {
      option (grpckit.auth.v1.access) = {roles: ["admin"]};
    }
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from grpckit.api.auth.v1 import access_pb2
from grpckit.auth._principal import ADMIN_ROLE, SERVICE_ROLE, Principal

__all__ = ["AccessPolicy", "declared_policy", "missing_policies", "policies_of"]

_DEFAULT_EXEMPT = frozenset({ADMIN_ROLE, SERVICE_ROLE})


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may call one method. Mirrors ``grpckit.auth.v1.AccessRule``.

    Example: ``AccessPolicy(roles=frozenset({"admin"}))`` — admins only.
    """

    public: bool = False
    authenticated: bool = False
    roles: frozenset[str] = frozenset()
    owner_field: str = ""
    owner_exempt_roles: frozenset[str] = _DEFAULT_EXEMPT

    def __post_init__(self) -> None:
        if not (self.public or self.authenticated or self.roles):
            raise ValueError("an access policy needs public, authenticated or at least one role")

    @classmethod
    def from_rule(cls, rule: access_pb2.AccessRule) -> AccessPolicy:
        """The policy of a proto ``AccessRule`` option."""
        return cls(
            public=rule.public,
            authenticated=rule.authenticated,
            roles=frozenset(rule.roles),
            owner_field=rule.owner_field,
            owner_exempt_roles=frozenset(rule.owner_exempt_roles) or _DEFAULT_EXEMPT,
        )

    def admits_role(self, principal: Principal) -> bool:
        """True when the principal passes the role part (authentication checked elsewhere)."""
        return self.public or self.authenticated or principal.has_role(*self.roles)

    def describe(self) -> str:
        """Short human text: ``public``, ``authenticated``, ``roles: admin, service``."""
        if self.public:
            return "public"
        if self.authenticated:
            return "any signed-in caller"
        return "roles: " + ", ".join(sorted(self.roles))


def declared_policy(
    full_method: str, pool: descriptor_pool.DescriptorPool | None = None
) -> AccessPolicy | None:
    """The policy declared on ``/pkg.Service/Method`` in the descriptors, or ``None``.

    Example: ``declared_policy("/shop.users.v1.UserService/Login").public`` is True.
    """
    method = _method(full_method, pool or descriptor_pool.Default())
    if method is None:
        return None
    options = method.GetOptions()
    if not options.HasExtension(access_pb2.access):
        return None
    return AccessPolicy.from_rule(options.Extensions[access_pb2.access])


def missing_policies(
    services: Iterable[str], pool: descriptor_pool.DescriptorPool | None = None
) -> list[str]:
    """Full method names of ``services`` that declare no access policy (to fail fast at start).

    Example: ``assert missing_policies(["shop.users.v1.UserService"]) == []``
    """
    pool = pool or descriptor_pool.Default()
    missing: list[str] = []
    for name in services:
        service = pool.FindServiceByName(name)
        for method in service.methods:
            full = f"/{service.full_name}/{method.name}"
            if declared_policy(full, pool) is None:
                missing.append(full)
    return missing


def _method(full_method: str, pool: descriptor_pool.DescriptorPool) -> MethodDescriptor | None:
    service, _, name = full_method.lstrip("/").partition("/")
    try:
        found: MethodDescriptor = pool.FindMethodByName(f"{service}.{name}")
    except KeyError:
        return None
    return found


def policies_of(table: Mapping[str, AccessPolicy]) -> dict[str, AccessPolicy]:
    """Validate an explicit ``{"/pkg.Svc/Method": AccessPolicy}`` table (tests, non-proto apps)."""
    for key, value in table.items():
        if not key.startswith("/") or key.count("/") != 2:
            raise ValueError(f"policy key {key!r}: expected '/pkg.Service/Method'")
        if not isinstance(value, AccessPolicy):
            raise TypeError(f"policy for {key!r} is not an AccessPolicy: {value!r}")
    return dict(table)
