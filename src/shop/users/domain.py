"""Users domain: the account entity, registration rules and authentication, without I/O.

>>> normalize_email("  Ada@Example.COM ")
'ada@example.com'
>>> registration_violations("ada@example.com", "short", "Ada")
[('password', 'must be at least 8 characters')]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # bounds the hashing work one request can cause
MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 100
DEFAULT_ROLES = ("customer",)
#: The role that may act on any account (granted to the first admin at start).
ADMIN_ROLE = "admin"

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")

Violation = tuple[str, str]


@dataclass(frozen=True)
class User:
    """A registered account. ``password_hash`` never leaves the service."""

    id: str
    email: str
    name: str
    roles: tuple[str, ...]
    created_at: datetime
    active: bool
    password_hash: str


class UsersError(Exception):
    """Root of the expected failures of the users service."""


class EmailTakenError(UsersError):
    """Another account already uses this email."""

    def __init__(self, email: str) -> None:
        super().__init__(f"an account with email {email!r} already exists")
        self.email = email


class UserNotFoundError(UsersError):
    """No account has this id."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id!r} not found")
        self.user_id = user_id


class InvalidCredentialsError(UsersError):
    """Unknown email or wrong password; deliberately does not say which."""

    def __init__(self) -> None:
        super().__init__("email or password is incorrect")


class PasswordVerifier(Protocol):
    """What :func:`authenticate` needs of a password hasher."""

    def verify(self, password: str, encoded: str) -> bool: ...

    @property
    def dummy_hash(self) -> str: ...


def normalize_email(email: str) -> str:
    """Emails compare case-insensitively and without surrounding blanks."""
    return email.strip().lower()


def email_violations(email: str) -> list[Violation]:
    if not email:
        return [("email", "is required")]
    if len(email) > MAX_EMAIL_LENGTH:
        return [("email", f"must be at most {MAX_EMAIL_LENGTH} characters")]
    if not _EMAIL.match(email):
        return [("email", "is not an email address like 'name@example.com'")]
    return []


def registration_violations(email: str, password: str, name: str) -> list[Violation]:
    """Every rule a new account breaks; ``email`` is expected already normalized."""
    violations = email_violations(email)
    if len(password) < MIN_PASSWORD_LENGTH:
        violations.append(("password", f"must be at least {MIN_PASSWORD_LENGTH} characters"))
    violations += _password_too_long(password)
    if not name.strip():
        violations.append(("name", "is required"))
    elif len(name.strip()) > MAX_NAME_LENGTH:
        violations.append(("name", f"must be at most {MAX_NAME_LENGTH} characters"))
    return violations


def login_violations(email: str, password: str) -> list[Violation]:
    """What makes a login request unusable (as opposed to merely wrong)."""
    given = {"email": email, "password": password}
    violations = [(field, "is required") for field, value in given.items() if not value]
    return violations + _password_too_long(password)


def _password_too_long(password: str) -> list[Violation]:
    if len(password) > MAX_PASSWORD_LENGTH:
        return [("password", f"must be at most {MAX_PASSWORD_LENGTH} characters")]
    return []


def new_user(
    *,
    user_id: str,
    email: str,
    name: str,
    password_hash: str,
    now: datetime,
    roles: tuple[str, ...] = DEFAULT_ROLES,
) -> User:
    """A fresh, active account (a customer unless ``roles`` says otherwise)."""
    return User(
        id=user_id,
        email=normalize_email(email),
        name=name.strip(),
        roles=roles,
        created_at=now,
        active=True,
        password_hash=password_hash,
    )


def authenticate(user: User | None, password: str, hasher: PasswordVerifier) -> User:
    """Check a login attempt; ``user`` is whoever owns the email, if anyone.

    A hash is verified even for an unknown email, so the response time does not reveal
    which emails have accounts; a disabled account fails the same way, after the same work,
    so the answer never says which part was wrong.
    """
    encoded = user.password_hash if user is not None else hasher.dummy_hash
    matched = hasher.verify(password, encoded)
    if user is None or not matched or not user.active:
        raise InvalidCredentialsError()
    return user


def with_role(user: User, role: str) -> User:
    """``user`` holding ``role`` too (the same value when it already does)."""
    return user if role in user.roles else replace(user, roles=(*user.roles, role))


def validity(user: User | None) -> str:
    """Why ``user`` may not place orders: "USER_NOT_FOUND", "USER_DISABLED", or "" when valid."""
    if user is None:
        return "USER_NOT_FOUND"
    return "" if user.active else "USER_DISABLED"
