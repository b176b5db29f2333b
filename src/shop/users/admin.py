"""The first admin: an account created (or promoted) at start from the settings.

``ensure_admin`` is idempotent and safe when several processes start at once: it creates the
account with the configured password only when no account has the email (losing the
insert race to another process counts as "exists"), grants the ``admin`` role to an existing
account that lacks it, and never changes an existing password.

Example::

    admin = await ensure_admin(store, email="root@example.com", password=secret,
                               hasher=ScryptHasher(), now=utc_now())
    assert "admin" in admin.user.roles
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from shop.common.ids import new_id
from shop.users import domain
from shop.users.passwords import ScryptHasher
from shop.users.store import UserStore

ADMIN_NAME = "Admin"


@dataclass(frozen=True)
class AdminAccount:
    """The admin account after :func:`ensure_admin`; ``created`` when this call inserted it."""

    user: domain.User
    created: bool


async def ensure_admin(
    store: UserStore, *, email: str, password: str, hasher: ScryptHasher, now: datetime
) -> AdminAccount:
    """Make sure the account ``email`` exists and holds the admin role.

    Raises ValueError, naming the rule but never the password, when the email or the password
    could not register an account.
    """
    email = domain.normalize_email(email)
    violations = domain.registration_violations(email, password, ADMIN_NAME)
    if violations:
        problems = "; ".join(f"{field} {problem}" for field, problem in violations)
        raise ValueError(f"the admin account settings are not valid: {problems}")
    existing = await store.by_email(email)
    if existing is None:
        password_hash = await asyncio.to_thread(hasher.hash, password)
        admin = domain.new_user(
            user_id=new_id(),
            email=email,
            name=ADMIN_NAME,
            password_hash=password_hash,
            now=now,
            roles=(domain.ADMIN_ROLE,),
        )
        try:
            return AdminAccount(await store.add(admin), created=True)
        except domain.EmailTakenError:
            existing = await store.by_email(email)  # another process created it just now
        if existing is None:
            raise RuntimeError(f"the admin account {email!r} vanished while it was created")
    return AdminAccount(await store.grant_role(existing.id, domain.ADMIN_ROLE), created=False)
