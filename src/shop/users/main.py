"""Composition root of the users service: ``mount(app, ctx)`` is all the CLI calls."""

from __future__ import annotations

import secrets

from grpckit import App
from shop.api.users.v1 import users_pb2, users_pb2_grpc
from shop.common.runtime import ServiceContext
from shop.users.passwords import ScryptHasher
from shop.users.service import UserServicer
from shop.users.store import MIGRATIONS, UserStore
from shop.users.tokens import TokenIssuer

SERVICE = users_pb2.DESCRIPTOR.services_by_name["UserService"]
TOKEN_TTL_SECONDS = 3600


async def mount(app: App, ctx: ServiceContext) -> None:
    """Migrate the users database and register UserService with its health check.

    The database belongs to ``ctx``, which closes it when the process stops.
    """
    db = ctx.database("users")
    await db.migrate(MIGRATIONS)
    # Settings has no signing key yet: each process signs with its own random key, so a token
    # verifies only in the process that issued it (fine for `shop up`, not for replicas).
    ctx.logger.warning("users.ephemeral_token_key", ttl_seconds=TOKEN_TTL_SECONDS)
    tokens = TokenIssuer(secrets.token_bytes(32), ttl_seconds=TOKEN_TTL_SECONDS)
    servicer = UserServicer(UserStore(db), hasher=ScryptHasher(), tokens=tokens)
    app.add_service(users_pb2_grpc.add_UserServiceServicer_to_server, servicer, SERVICE)
    app.add_health_check(SERVICE.full_name, db.ping)
