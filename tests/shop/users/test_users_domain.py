"""Users domain rules, password hashing and refresh tokens: pure, in memory."""

from __future__ import annotations

import doctest
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest

from shop.users import domain, passwords, refresh
from shop.users.passwords import ScryptHasher

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
FAST = ScryptHasher(cost=2**4)


def make_user(*, active: bool = True, password: str = "s3cret-pass") -> domain.User:
    user = domain.new_user(
        user_id="u-1",
        email=" Ada@Example.com",
        name=" Ada ",
        password_hash=FAST.hash(password),
        now=NOW,
    )
    return user if active else domain.User(**{**user.__dict__, "active": False})


def test_new_user_normalizes_and_defaults() -> None:
    user = make_user()
    assert (user.email, user.name, user.roles, user.active) == (
        "ada@example.com",
        "Ada",
        ("customer",),
        True,
    )


def test_registration_collects_every_violation() -> None:
    assert domain.registration_violations("", "short", "  ") == [
        ("email", "is required"),
        ("password", "must be at least 8 characters"),
        ("name", "is required"),
    ]


@pytest.mark.parametrize(
    "email", ["plain", "a@b", "a b@c.de", "a@@b.de", "@b.de", "a@b.", "a" * 250 + "@b.de"]
)
def test_bad_emails_are_rejected(email: str) -> None:
    assert [field for field, _ in domain.email_violations(email)] == ["email"]


def test_limits_on_password_and_name() -> None:
    violations = domain.registration_violations("a@b.de", "x" * 1025, "n" * 101)
    assert violations == [
        ("password", "must be at most 1024 characters"),
        ("name", "must be at most 100 characters"),
    ]
    assert domain.registration_violations("a@b.de", "x" * 8, "n" * 100) == []


def test_authenticate_accepts_the_right_password() -> None:
    user = make_user()
    assert domain.authenticate(user, "s3cret-pass", FAST) is user


@pytest.mark.parametrize(("user", "password"), [(None, "s3cret-pass"), (make_user(), "wrong-pass")])
def test_authenticate_does_not_say_which_part_was_wrong(
    user: domain.User | None, password: str
) -> None:
    with pytest.raises(domain.InvalidCredentialsError, match="email or password is incorrect"):
        domain.authenticate(user, password, FAST)


@pytest.mark.parametrize("password", ["s3cret-pass", "wrong-pass"])
def test_a_disabled_account_fails_like_bad_credentials(password: str) -> None:
    with pytest.raises(domain.InvalidCredentialsError, match="email or password is incorrect"):
        domain.authenticate(make_user(active=False), password, FAST)


def test_with_role_adds_a_role_once() -> None:
    user = make_user()
    admin = domain.with_role(user, "admin")
    assert admin.roles == ("customer", "admin")
    assert domain.with_role(admin, "admin") is admin


def test_validity_reasons() -> None:
    assert domain.validity(None) == "USER_NOT_FOUND"
    assert domain.validity(make_user(active=False)) == "USER_DISABLED"
    assert domain.validity(make_user()) == ""


def test_hashes_are_salted_and_unreadable_hashes_never_match() -> None:
    first, second = FAST.hash("same-password"), FAST.hash("same-password")
    assert first != second
    assert first.startswith("scrypt$16$8$1$")
    for broken in ["", "bcrypt$1$2$3$4$5", "scrypt$16$8$1$!!$!!", first.rsplit("$", 1)[0]]:
        assert not FAST.verify("same-password", broken)


def test_hashes_keep_their_own_cost() -> None:
    encoded = ScryptHasher(cost=2**5).hash("pass-word")
    assert FAST.verify("pass-word", encoded)


def test_hasher_rejects_a_cost_that_is_not_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        ScryptHasher(cost=1000)


REFRESH_TTL = timedelta(days=30)


def test_refresh_tokens_are_opaque_and_stored_only_as_a_hash() -> None:
    issued = refresh.issue("u-1", now=NOW, ttl=REFRESH_TTL)
    token_id, secret = refresh.parse(issued.value)
    record = issued.record
    assert (token_id, record.family_id, record.user_id) == (record.id, record.id, "u-1")
    assert len(secret) == 43  # 32 random bytes, base64url
    assert secret not in repr(record)
    assert record.secret_hash == refresh.hash_secret(secret) != secret
    assert (record.expires_at, issued.expires_in(NOW)) == (NOW + REFRESH_TTL, 30 * 24 * 3600)
    successor = refresh.issue("u-1", now=NOW, ttl=REFRESH_TTL, family_id=record.family_id)
    assert (successor.record.family_id, successor.record.id != record.id) == (record.id, True)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "no-separator",
        "42.secret",
        f"{'0' * 36}.x",
        "123e4567-e89b-12d3-a456-426614174000.",
        "123e4567-e89b-12d3-a456-426614174000." + "s" * 129,
    ],
)
def test_malformed_refresh_tokens_are_invalid(value: str) -> None:
    with pytest.raises(refresh.RefreshTokenInvalidError):
        refresh.parse(value)


def test_refresh_token_checks_in_order() -> None:
    issued = refresh.issue("u-1", now=NOW, ttl=REFRESH_TTL)
    _, secret = refresh.parse(issued.value)
    record = issued.record
    refresh.check(record, secret, now=NOW + REFRESH_TTL - timedelta(seconds=1))
    used = replace(record, used_at=NOW)
    revoked = replace(used, revoked_at=NOW)
    cases: list[tuple[refresh.RefreshToken | None, str, datetime, type[Exception]]] = [
        (None, secret, NOW, refresh.RefreshTokenInvalidError),
        (record, "wrong-secret", NOW, refresh.RefreshTokenInvalidError),
        (revoked, secret, NOW, refresh.RefreshTokenInvalidError),
        (used, secret, NOW + REFRESH_TTL, refresh.RefreshTokenReusedError),
        (record, secret, NOW + REFRESH_TTL, refresh.RefreshTokenExpiredError),
    ]
    for token, presented, now, expected in cases:
        with pytest.raises(expected):
            refresh.check(token, presented, now=now)


def test_login_violations() -> None:
    assert domain.login_violations("", "") == [
        ("email", "is required"),
        ("password", "is required"),
    ]
    assert domain.login_violations("a@b.de", "x" * 1025) == [
        ("password", "must be at most 1024 characters")
    ]
    assert domain.login_violations("whatever", "short") == []  # wrong, not malformed


@pytest.mark.parametrize("module", [domain, passwords, refresh])
def test_docstring_examples_run(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert (result.failed, result.attempted > 0) == (0, True)
