"""authentication() + authorization() over a real in-process server, and the credential
forwarding client interceptors. Token-level attacks are covered in test_jwt.py; here: what the
caller sees (status codes, reasons) and what the handler sees (the principal)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from grpckit.auth import (
    ANONYMOUS,
    AccessPolicy,
    Principal,
    ServiceTokens,
    authentication,
    authorization,
    credential_interceptors,
    current_principal,
    declared_policy,
    missing_policies,
)
from grpckit.auth._jwt import TokenSigner, TokenVerifier
from grpckit.auth._keys import KeySet, SigningKey, StaticKeys
from grpckit.call import CallInfo
from grpckit.client import dial
from grpckit.errors import StatusError
from grpckit.middleware import Next
from grpckit.testing import PingServicer, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

PING = "/grpckit.testing.v1.PingService/Ping"
SERVER_STREAM = "/grpckit.testing.v1.PingService/PingServerStream"
CLIENT_STREAM = "/grpckit.testing.v1.PingService/PingClientStream"
BIDI = "/grpckit.testing.v1.PingService/PingBidi"

USER_KEY = SigningKey.generate()
SERVICE_KEY = SigningKey.generate()
USERS = TokenSigner(USER_KEY, issuer="test.users", audience="test", ttl=60)
SERVICES = TokenSigner(SERVICE_KEY, issuer="test.service", audience="test", ttl=60)


def user_verifier() -> TokenVerifier:
    return TokenVerifier(StaticKeys(KeySet.of(USER_KEY)), issuers=["test.users"], audience="test")


def service_verifier() -> TokenVerifier:
    return TokenVerifier(
        StaticKeys(KeySet.of(SERVICE_KEY)), issuers=["test.service"], audience="test"
    )


class Seen:
    """Records the principal each call's handler ran with."""

    def __init__(self) -> None:
        self.principals: list[Principal | None] = []

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        self.principals.append(current_principal())
        await next_(call)


def bearer(token: str, key: str = "authorization") -> tuple[tuple[str, str], ...]:
    return ((key, f"Bearer {token}"),)


async def code_of(coro: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    status = StatusError.from_rpc_error(info.value)
    return info.value.code(), status.reason


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    policies: dict[str, AccessPolicy] = getattr(request, "param", {})
    seen = Seen()
    async with serve_in_process(
        PingServicer(),
        interceptors=[
            authentication(user_verifier(), services=service_verifier()),
            authorization(policies),
            seen,
        ],
    ) as running:
        running.seen = seen
        yield running


CUSTOMERS_OWN = {PING: AccessPolicy(authenticated=True, owner_field="message")}
ADMINS = {PING: AccessPolicy(roles=frozenset({"admin"}))}
SERVICES_ONLY = {PING: AccessPolicy(roles=frozenset({"service"}))}
PUBLIC = {PING: AccessPolicy(public=True)}


@pytest.mark.parametrize("server", [PUBLIC], indirect=True)
async def test_public_method_admits_anonymous_callers_but_not_bad_tokens(server: Any) -> None:
    await server.ping.Ping(ping_pb2.PingRequest(message="hi"))
    assert server.seen.principals == [ANONYMOUS]
    code, reason = await code_of(server.ping.Ping(ping_pb2.PingRequest(), metadata=bearer("x.y.z")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert reason == "TOKEN_MALFORMED"


@pytest.mark.parametrize("server", [CUSTOMERS_OWN], indirect=True)
async def test_owner_field_limits_customers_to_themselves(server: Any) -> None:
    token = USERS.issue("u1", roles=["customer"]).value
    reply = await server.ping.Ping(ping_pb2.PingRequest(message="u1"), metadata=bearer(token))
    assert reply.message == "u1"
    principal = server.seen.principals[-1]
    assert principal.subject == "u1" and principal.roles == {"customer"}
    assert principal.token == token
    code, reason = await code_of(
        server.ping.Ping(ping_pb2.PingRequest(message="u2"), metadata=bearer(token))
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
    admin = USERS.issue("root", roles=["admin"]).value
    await server.ping.Ping(ping_pb2.PingRequest(message="u2"), metadata=bearer(admin))
    code, reason = await code_of(server.ping.Ping(ping_pb2.PingRequest(message="u1")))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING")


@pytest.mark.parametrize("server", [ADMINS], indirect=True)
async def test_roles_are_required(server: Any) -> None:
    customer = USERS.issue("u1", roles=["customer"]).value
    code, reason = await code_of(
        server.ping.Ping(ping_pb2.PingRequest(), metadata=bearer(customer))
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    admin = USERS.issue("root", roles=["admin"]).value
    await server.ping.Ping(ping_pb2.PingRequest(), metadata=bearer(admin))


@pytest.mark.parametrize("server", [SERVICES_ONLY], indirect=True)
async def test_service_role_comes_only_from_a_service_identity(server: Any) -> None:
    forged = USERS.issue("u1", roles=["service", "customer"]).value  # a user claiming "service"
    code, _ = await code_of(server.ping.Ping(ping_pb2.PingRequest(), metadata=bearer(forged)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    service = SERVICES.issue("gateway", roles=["service"]).value
    await server.ping.Ping(
        ping_pb2.PingRequest(), metadata=bearer(service, "x-service-authorization")
    )
    principal = server.seen.principals[-1]
    assert principal.service == "gateway" and principal.subject == ""
    # a user token presented as a service token is rejected (wrong issuer)
    code, reason = await code_of(
        server.ping.Ping(ping_pb2.PingRequest(), metadata=bearer(forged, "x-service-authorization"))
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_UNKNOWN_KEY")


@pytest.mark.parametrize("server", [SERVICES_ONLY], indirect=True)
async def test_service_token_without_service_role_is_rejected(server: Any) -> None:
    token = SERVICES.issue("gateway", roles=["customer"]).value
    code, reason = await code_of(
        server.ping.Ping(ping_pb2.PingRequest(), metadata=bearer(token, "x-service-authorization"))
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_NOT_A_SERVICE")


async def test_methods_without_a_policy_are_denied_for_every_kind() -> None:
    admin = USERS.issue("root", roles=["admin"]).value
    async with serve_in_process(
        PingServicer(),
        interceptors=[authentication(user_verifier()), authorization()],
    ) as server:
        stub = ping_pb2_grpc.PingServiceStub(server.channel)
        calls = [
            stub.Ping(ping_pb2.PingRequest(), metadata=bearer(admin)),
            _drain(
                stub.PingServerStream(
                    ping_pb2.PingServerStreamRequest(count=2), metadata=bearer(admin)
                )
            ),
            stub.PingClientStream(
                iter([ping_pb2.PingClientStreamRequest()]), metadata=bearer(admin)
            ),
            _drain(stub.PingBidi(iter([ping_pb2.PingBidiRequest()]), metadata=bearer(admin))),
        ]
        for call in calls:
            code, reason = await code_of(call)
            assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "NO_POLICY")


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


@pytest.mark.parametrize("server", [{PING: AccessPolicy(authenticated=True)}], indirect=True)
@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "bearer"],
)
async def test_malformed_authorization_headers(server: Any, header: str) -> None:
    code, reason = await code_of(
        server.ping.Ping(ping_pb2.PingRequest(), metadata=(("authorization", header),))
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "MALFORMED_CREDENTIALS")


async def test_inactive_accounts_are_rejected() -> None:
    disabled = {"u-disabled"}

    async def active(subject: str) -> bool:
        return subject not in disabled

    async with serve_in_process(
        PingServicer(),
        interceptors=[
            authentication(user_verifier(), active=active),
            authorization({PING: AccessPolicy(authenticated=True)}),
        ],
    ) as server:
        await server.ping.Ping(ping_pb2.PingRequest(), metadata=bearer(USERS.issue("u-ok").value))
        code, reason = await code_of(
            server.ping.Ping(
                ping_pb2.PingRequest(), metadata=bearer(USERS.issue("u-disabled").value)
            )
        )
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "ACCOUNT_INACTIVE")


async def test_nested_calls_forward_the_user_token_and_add_the_service_token() -> None:
    """A front server calls a back server from its handler: the back sees user + service."""
    tokens = ServiceTokens(SERVICES, subject="front")
    seen = Seen()
    policy = {PING: AccessPolicy(roles=frozenset({"service"}))}
    async with serve_in_process(
        PingServicer(),
        interceptors=[
            authentication(user_verifier(), services=service_verifier()),
            authorization(policy),
            seen,
        ],
    ) as back:
        channel = dial(
            back.address, interceptors=credential_interceptors(service_token=tokens.token)
        )
        back_stub = ping_pb2_grpc.PingServiceStub(channel)

        class Front(PingServicer):
            async def Ping(self, request: Any, context: Any) -> Any:
                return await back_stub.Ping(request)

        async with serve_in_process(
            Front(),
            interceptors=[
                authentication(user_verifier()),
                authorization({PING: AccessPolicy(authenticated=True)}),
            ],
        ) as front:
            user = USERS.issue("u7", roles=["customer"]).value
            await front.ping.Ping(ping_pb2.PingRequest(message="x"), metadata=bearer(user))
        # outside any served call: the service identity alone
        await back_stub.Ping(ping_pb2.PingRequest())
        await channel.close()
    first, second = seen.principals
    assert first is not None and second is not None
    assert (first.subject, first.service, first.roles) == ("u7", "front", {"customer", "service"})
    assert (second.subject, second.service, second.roles) == ("", "front", {"service"})


def test_service_tokens_are_reused_until_two_thirds_of_their_life() -> None:
    now = [1000.0]
    tokens = ServiceTokens(
        TokenSigner(SERVICE_KEY, issuer="s", audience="a", ttl=300, clock=lambda: now[0]),
        subject="gw",
        ttl=300,
        clock=lambda: now[0],
    )
    first = tokens.token()
    now[0] += 150
    assert tokens.token() == first
    now[0] += 60
    assert tokens.token() != first


def test_methods_without_the_option_have_no_policy() -> None:
    assert declared_policy(PING) is None
    assert declared_policy("/nope.v1.Nope/Nope") is None
    assert missing_policies(["grpckit.testing.v1.PingService"]) == [
        PING,
        SERVER_STREAM,
        CLIENT_STREAM,
        BIDI,
    ]


def test_an_empty_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="needs public, authenticated or at least one role"):
        AccessPolicy()


async def test_unreachable_keys_are_unavailable_not_unauthenticated() -> None:
    """While the issuer's keys were never fetched (it is restarting), a token cannot be judged:
    the caller is told to retry, not that its token is bad."""
    from grpckit.auth import RemoteJwks

    async def down() -> dict[str, Any]:
        raise ConnectionError("issuer down")

    verifier = TokenVerifier(RemoteJwks(down), issuers=["test.users"], audience="test")
    async with serve_in_process(
        PingServicer(),
        interceptors=[
            authentication(verifier),
            authorization({PING: AccessPolicy(authenticated=True)}),
        ],
    ) as server:
        code, reason = await code_of(
            server.ping.Ping(ping_pb2.PingRequest(), metadata=bearer(USERS.issue("u1").value))
        )
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "KEYS_UNAVAILABLE")
