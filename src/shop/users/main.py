"""Composition root of the users service: ``mount(app, ctx)`` is all the CLI calls."""

from __future__ import annotations

from grpckit import App
from shop.api.users.v1 import users_pb2, users_pb2_grpc
from shop.common.runtime import ServiceContext
from shop.users import domain
from shop.users.admin import ensure_admin
from shop.users.passwords import ScryptHasher
from shop.users.service import UserServicer, utc_now
from shop.users.store import MIGRATIONS, RefreshTokenStore, UserStore
from shop.users.tokens import load_signing_key

SERVICE = users_pb2.DESCRIPTOR.services_by_name["UserService"]


async def mount(app: App, ctx: ServiceContext) -> None:
    """Migrate the users database, ensure the first admin, register UserService and its health.

    Access tokens are signed with the key under ``ctx.settings.data_dir`` (created on first
    start); disabling or deleting a user calls ``ctx.subject_revoked``. The database belongs
    to ``ctx``, which closes it when the process stops.
    """
    settings = ctx.settings
    db = ctx.database("users")
    await db.migrate(MIGRATIONS)
    store, hasher = UserStore(db), ScryptHasher()
    if settings.admin_email and settings.admin_password:
        admin = await ensure_admin(
            store,
            email=settings.admin_email,
            password=settings.admin_password,
            hasher=hasher,
            now=utc_now(),
        )
        ctx.logger.info(
            "users.admin_ready",
            user_id=admin.user.id,
            email=admin.user.email,
            created=admin.created,
        )
    elif settings.admin_email or settings.admin_password:
        ctx.logger.warning("users.admin_incomplete", hint="set both the admin email and password")
    key = load_signing_key(settings.data_dir)
    servicer = UserServicer(
        store, RefreshTokenStore(db), hasher=hasher, key=key, on_revoked=ctx.subject_revoked
    )
    app.add_service(users_pb2_grpc.add_UserServiceServicer_to_server, servicer, SERVICE)
    app.add_health_check(SERVICE.full_name, db.ping)

    async def account_active(user_id: str) -> bool:
        return domain.validity(await store.get(user_id)) == ""

    # this process's token checks ask the store directly instead of calling ValidateUser
    ctx.account_check = account_active
