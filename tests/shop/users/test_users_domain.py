"""Users domain rules, password hashing and tokens: pure, in memory."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest

from shop.users import domain, passwords, tokens
from shop.users.passwords import ScryptHasher
from shop.users.tokens import InvalidTokenError, TokenIssuer

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


def test_disabled_account_is_reported_only_with_the_right_password() -> None:
    disabled = make_user(active=False)
    with pytest.raises(domain.UserDisabledError):
        domain.authenticate(disabled, "s3cret-pass", FAST)
    with pytest.raises(domain.InvalidCredentialsError):
        domain.authenticate(disabled, "wrong-pass", FAST)


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


def test_token_round_trip_and_expiry() -> None:
    issuer = TokenIssuer(b"k" * 32, ttl_seconds=900)
    token = issuer.issue(subject="u-1", roles=["customer"], now=NOW)
    claims = issuer.verify(token.value, now=NOW + timedelta(seconds=899))
    assert claims == {
        "iss": "shop.users",
        "sub": "u-1",
        "roles": ["customer"],
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 900,
    }
    assert token.expires_in == 900
    with pytest.raises(InvalidTokenError, match="expired"):
        issuer.verify(token.value, now=NOW + timedelta(seconds=900))


def test_tokens_signed_with_another_secret_or_tampered_are_refused() -> None:
    token = TokenIssuer(b"a" * 32).issue(subject="u-1", roles=[], now=NOW).value
    with pytest.raises(InvalidTokenError, match="bad signature"):
        TokenIssuer(b"b" * 32).verify(token, now=NOW)
    header, _, signature = token.split(".")
    forged = TokenIssuer(b"a" * 32).issue(subject="admin", roles=["admin"], now=NOW).value
    with pytest.raises(InvalidTokenError):
        TokenIssuer(b"a" * 32).verify(f"{header}.{forged.split('.')[1]}.{signature}", now=NOW)
    with pytest.raises(InvalidTokenError):
        TokenIssuer(b"a" * 32).verify("not-a-token", now=NOW)


def test_issuer_refuses_weak_configuration() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenIssuer(b"short")
    with pytest.raises(ValueError, match="positive"):
        TokenIssuer(b"k" * 32, ttl_seconds=0)


def test_login_violations() -> None:
    assert domain.login_violations("", "") == [
        ("email", "is required"),
        ("password", "is required"),
    ]
    assert domain.login_violations("a@b.de", "x" * 1025) == [
        ("password", "must be at most 1024 characters")
    ]
    assert domain.login_violations("whatever", "short") == []  # wrong, not malformed


@pytest.mark.parametrize("module", [domain, passwords, tokens])
def test_docstring_examples_run(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert (result.failed, result.attempted > 0) == (0, True)
