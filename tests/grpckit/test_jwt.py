"""Signing keys, JWKS, the token signer and the verifier: the hostile-token matrix."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from grpckit.auth._jwt import Claims, InvalidTokenError, TokenSigner, TokenVerifier
from grpckit.auth._keys import (
    KeySet,
    KeySource,
    KeySourceUnavailableError,
    PublicKey,
    RemoteJwks,
    SigningKey,
    StaticKeys,
    jwks,
)

NOW = 1_700_000_000.0
ISSUER = "shop.users"
AUDIENCE = "shop"
SRC = Path(__file__).resolve().parents[2] / "src"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingKeys:
    """A KeySource over a KeySet that counts lookups."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = KeySet.of(*keys)
        self.lookups = 0

    async def key(self, kid: str) -> PublicKey | None:
        self.lookups += 1
        return self.keys.get(kid)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64_json(value: Mapping[str, Any]) -> str:
    return b64(json.dumps(value).encode())


def unb64_json(part: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def claims(now: float = NOW, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "u-1",
        "aud": AUDIENCE,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 900,
        "jti": "j-1",
        "roles": ["customer"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: SigningKey, payload: Mapping[str, Any], *, kid: str | None = "same") -> str:
    """A token signed by ``key``; ``kid`` defaults to the key's own."""
    headers = {} if kid is None else {"kid": key.kid if kid == "same" else kid}
    return jwt.encode(dict(payload), key.private_pem(), algorithm="EdDSA", headers=headers)


def sign_by_hand(key: SigningKey, payload: Mapping[str, Any]) -> str:
    """Like :func:`sign` for payloads PyJWT refuses to encode."""
    header = {"alg": "EdDSA", "typ": "JWT", "kid": key.kid}
    signing_input = f"{b64_json(header)}.{b64_json(payload)}"
    private = serialization.load_pem_private_key(key.private_pem(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return f"{signing_input}.{b64(private.sign(signing_input.encode()))}"


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(key: SigningKey) -> CountingKeys:
    return CountingKeys(key)


@pytest.fixture
def verifier(keys: CountingKeys, clock: Clock) -> TokenVerifier:
    return TokenVerifier(keys, issuers=[ISSUER, "other.issuer"], audience=AUDIENCE, clock=clock)


@pytest.fixture
def signer(key: SigningKey, clock: Clock) -> TokenSigner:
    return TokenSigner(key, issuer=ISSUER, audience=AUDIENCE, ttl=900, clock=clock)


async def rejected(verifier: TokenVerifier, token: str) -> InvalidTokenError:
    with pytest.raises(InvalidTokenError) as caught:
        await verifier.verify(token)
    assert token not in str(caught.value)
    assert token.split(".")[0] not in str(caught.value)
    return caught.value


# --- keys ----------------------------------------------------------------------------------


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.1 (private key), A.2 (x) and A.3 (thumbprint)
    d = base64.urlsafe_b64decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
    pem = Ed25519PrivateKey.from_private_bytes(d).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = SigningKey.from_pem(pem)
    assert key.public_jwk() == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "kid": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",
        "alg": "EdDSA",
        "use": "sig",
    }
    assert key.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert key.algorithm == "EdDSA"


def test_pem_round_trip_and_jwks(key: SigningKey) -> None:
    again = SigningKey.from_pem(key.private_pem())
    assert again.kid == key.kid
    other = SigningKey.generate()
    assert other.kid != key.kid
    assert jwks(key, other) == {"keys": [key.public_jwk(), other.public_jwk()]}
    assert "PRIVATE" not in repr(key)


def test_from_pem_rejects_other_keys() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        SigningKey.from_pem(ec_pem)
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        SigningKey.from_pem(b"hello")


def test_load_or_create_creates_private_files_then_loads_them(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "users.pem"
    created = SigningKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert SigningKey.load_or_create(path).kid == created.kid
    assert os.listdir(path.parent) == ["users.pem"]  # no temporary file left behind


@pytest.mark.parametrize(
    "content",
    [
        b"not a key",
        b"",
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    ],
)
def test_load_or_create_refuses_a_file_that_is_not_an_ed25519_pem(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "users.pem"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"users\.pem: not an"):
        SigningKey.load_or_create(path)
    assert path.read_bytes() == content


def test_load_or_create_reads_the_winners_key_when_it_loses_the_race(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users.pem"
    winner = SigningKey.generate()
    real_link = os.link

    def link_after_another_process(src: str, dst: str) -> None:
        Path(dst).write_bytes(winner.private_pem())  # the other process links first
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_another_process)
    assert SigningKey.load_or_create(path).kid == winner.kid
    assert os.listdir(tmp_path) == ["users.pem"]


def test_load_or_create_from_many_threads_makes_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "users.pem"
    barrier = threading.Barrier(16)
    kids: list[str] = []

    def create() -> None:
        barrier.wait()
        kids.append(SigningKey.load_or_create(path).kid)

    threads = [threading.Thread(target=create) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kids) == 16 and len(set(kids)) == 1
    assert SigningKey.from_pem(path.read_bytes()).kid == kids[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_load_or_create_from_several_processes_makes_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "users.pem"
    script = (
        "import sys; from pathlib import Path; from grpckit.auth._keys import SigningKey\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
        "print(SigningKey.load_or_create(Path(sys.argv[1])).kid, flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    for process in processes:  # all imported and waiting: start them together
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    kids = {process.communicate(timeout=30)[0].splitlines()[-1] for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert kids == {SigningKey.from_pem(path.read_bytes()).kid}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- key sets ------------------------------------------------------------------------------


def ec_jwk(kid: str) -> tuple[dict[str, str], ec.EllipticCurvePrivateKey]:
    private = ec.generate_private_key(ec.SECP256R1())
    numbers = private.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32, "big")),
        "y": b64(numbers.y.to_bytes(32, "big")),
        "kid": kid,
        "alg": "ES256",
    }
    return jwk, private


def test_from_jwks_keeps_signature_keys_and_skips_the_rest(key: SigningKey) -> None:
    ec_key, _ = ec_jwk("ec-1")
    document = {
        "keys": [
            key.public_jwk(),
            ec_key,
            {"kty": "oct", "k": b64(b"secret" * 6), "kid": "hmac", "alg": "HS256"},
            {"kty": "oct", "k": b64(b"secret" * 6), "kid": "hmac-no-alg"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
            {**key.public_jwk(), "kid": "enc", "use": "enc"},
            {**key.public_jwk(), "kid": "wrong-alg", "alg": "HS256"},
            {k: v for k, v in key.public_jwk().items() if k != "kid"},
        ]
    }
    keyset = KeySet.from_jwks(document)
    assert keyset.kids() == {key.kid, "ec-1"}
    assert len(keyset) == 2
    assert keyset.get("hmac") is None and keyset.get("hmac-no-alg") is None
    assert isinstance(keyset.get("ec-1"), ec.EllipticCurvePublicKey)
    assert KeySet.from_jwks(jwks(key)).get(key.kid) is not None


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"keys": "nope"},
        {"keys": ["not an object"]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "too-short"}]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "!" * 43}]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k"}]},
        {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": b64(b"\1" * 32), "y": b64(b"\2" * 32)}]},
    ],
    ids=["no-keys", "keys-not-list", "entry-not-object", "short-x", "bad-base64", "no-x", "off-curve"],
)  # fmt: skip
def test_from_jwks_rejects_malformed_documents(document: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="JWKS"):
        KeySet.from_jwks(document)


def test_from_jwks_rejects_two_keys_under_one_kid(key: SigningKey) -> None:
    impostor = {**SigningKey.generate().public_jwk(), "kid": key.kid}
    with pytest.raises(ValueError, match="share the kid"):
        KeySet.from_jwks({"keys": [key.public_jwk(), impostor]})
    assert len(KeySet.from_jwks({"keys": [key.public_jwk(), key.public_jwk()]})) == 1


async def test_static_keys_replace(key: SigningKey) -> None:
    source = StaticKeys(KeySet.of(key))
    assert isinstance(source, KeySource)
    assert await source.key(key.kid) is not None
    source.replace(KeySet())
    assert await source.key(key.kid) is None


# --- signer --------------------------------------------------------------------------------


def test_signer_header_and_claims(signer: TokenSigner, key: SigningKey) -> None:
    issued = signer.issue("u-1", roles=["customer", "admin"], extra={"email": "a@example.com"})
    assert jwt.get_unverified_header(issued.value) == {"alg": "EdDSA", "typ": "JWT", "kid": key.kid}
    payload = unb64_json(issued.value.split(".")[1])
    assert payload == {
        "email": "a@example.com",
        "iss": ISSUER,
        "sub": "u-1",
        "aud": AUDIENCE,
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 900,
        "jti": issued.token_id,
        "roles": ["customer", "admin"],
    }
    assert issued.expires_in == 900 and issued.expires_at == NOW + 900
    assert signer.issue("u-1").token_id != issued.token_id
    assert signer.issue("u-1", ttl=60).expires_in == 60
    assert issued.value not in repr(issued)


def test_signer_refuses_bad_input(signer: TokenSigner) -> None:
    with pytest.raises(ValueError, match="may not set"):
        signer.issue("u-1", extra={"sub": "admin"})
    with pytest.raises(ValueError, match="roles"):
        signer.issue("u-1", roles="admin")
    with pytest.raises(ValueError, match="subject"):
        signer.issue("")
    with pytest.raises(ValueError, match="ttl"):
        signer.issue("u-1", ttl=0)


# --- verifier: valid tokens and time -------------------------------------------------------


async def test_round_trip(signer: TokenSigner, verifier: TokenVerifier) -> None:
    issued = signer.issue("u-1", roles=["customer"], extra={"email": "a@example.com"})
    verified = await verifier.verify(issued.value)
    assert verified == Claims(
        subject="u-1",
        roles=frozenset({"customer"}),
        issuer=ISSUER,
        audience=(AUDIENCE,),
        expires_at=NOW + 900,
        not_before=NOW,
        issued_at=NOW,
        token_id=issued.token_id,
        raw={},
    )
    assert verified.raw["email"] == "a@example.com"


async def test_second_accepted_issuer_and_audience_list(
    key: SigningKey, verifier: TokenVerifier
) -> None:
    token = sign(key, claims(iss="other.issuer", aud=["billing", AUDIENCE]))
    verified = await verifier.verify(token)
    assert verified.issuer == "other.issuer" and verified.audience == ("billing", AUDIENCE)


async def test_expired_beyond_leeway_but_accepted_within(
    signer: TokenSigner, verifier: TokenVerifier, clock: Clock
) -> None:
    within = signer.issue("u-1", ttl=10).value
    beyond = signer.issue("u-2", ttl=10).value
    clock.now = NOW + 10 + 4.5  # exp + 4.5 s, leeway 5 s
    assert (await verifier.verify(within)).subject == "u-1"
    clock.now = NOW + 10 + 5
    assert (await rejected(verifier, beyond)).reason == "expired"


@pytest.mark.parametrize(("claim", "offset"), [("nbf", 60), ("iat", 60)])
async def test_not_yet_valid(
    key: SigningKey, verifier: TokenVerifier, claim: str, offset: int
) -> None:
    early = sign(key, claims(**{claim: int(NOW) + offset}))
    assert (await rejected(verifier, early)).reason == "not_yet_valid"
    within_leeway = sign(key, claims(**{claim: int(NOW) + 4}))
    assert (await verifier.verify(within_leeway)).subject == "u-1"


# --- verifier: hostile tokens --------------------------------------------------------------


async def test_signed_by_another_key_under_our_kid(
    key: SigningKey, verifier: TokenVerifier
) -> None:
    forged = sign(SigningKey.generate(), claims(roles=["admin"]), kid=key.kid)
    assert (await rejected(verifier, forged)).reason == "bad_signature"


async def test_tampered_payload(signer: TokenSigner, verifier: TokenVerifier) -> None:
    header, payload, signature = signer.issue("u-1").value.split(".")
    tampered = {**unb64_json(payload), "sub": "u-2"}
    token = f"{header}.{b64_json(tampered)}.{signature}"
    assert (await rejected(verifier, token)).reason == "bad_signature"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"iss": "evil"}, "bad_issuer"),
        ({"iss": 7}, "bad_issuer"),
        ({"aud": "billing"}, "bad_audience"),
        ({"aud": ["billing", "search"]}, "bad_audience"),
        ({"roles": "admin"}, "malformed"),
        ({"roles": ["admin", 1]}, "malformed"),
        ({"exp": "tomorrow"}, "malformed"),
        ({"nbf": True}, "malformed"),
        ({"exp": 10**400}, "malformed"),
        ({"sub": 42}, "malformed"),
        ({"sub": ""}, "missing_claim"),
        ({"exp": None}, "missing_claim"),
        ({"iat": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
        ({"iss": None}, "missing_claim"),
        ({"aud": None}, "missing_claim"),
    ],
)
async def test_bad_claims(
    key: SigningKey, verifier: TokenVerifier, overrides: dict[str, Any], reason: str
) -> None:
    token = sign_by_hand(key, claims(**overrides))
    assert (await rejected(verifier, token)).reason == reason


async def test_alg_none(key: SigningKey, verifier: TokenVerifier, keys: CountingKeys) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": key.kid}
    token = f"{b64_json(header)}.{b64_json(claims(roles=['admin']))}."
    assert (await rejected(verifier, token)).reason == "bad_algorithm"
    assert keys.lookups == 0


@pytest.mark.parametrize("secret", ["raw-x", "public-pem"])
@pytest.mark.parametrize("algorithms", [("EdDSA",), ("EdDSA", "ES256")])
async def test_hs256_signed_with_the_public_key(
    key: SigningKey, keys: CountingKeys, clock: Clock, secret: str, algorithms: tuple[str, ...]
) -> None:
    public = key.public_key()
    hmac_key = (
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if secret == "raw-x"
        else public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{b64_json(header)}.{b64_json(claims(roles=['admin']))}"
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    verifier = TokenVerifier(
        keys, issuers=[ISSUER], audience=AUDIENCE, algorithms=algorithms, clock=clock
    )
    token = f"{signing_input}.{b64(signature)}"
    assert (await rejected(verifier, token)).reason == "bad_algorithm"
    assert keys.lookups == 0


async def test_missing_kid(key: SigningKey, verifier: TokenVerifier) -> None:
    token = sign(key, claims(), kid=None)
    assert "kid" not in jwt.get_unverified_header(token)
    assert (await rejected(verifier, token)).reason == "unknown_key"


async def test_unknown_kid(verifier: TokenVerifier) -> None:
    token = sign(SigningKey.generate(), claims())
    assert (await rejected(verifier, token)).reason == "unknown_key"


async def test_algorithm_must_fit_the_key(key: SigningKey, clock: Clock) -> None:
    ec_key, ec_private = ec_jwk("ec-1")
    keyset = KeySet.from_jwks({"keys": [ec_key, key.public_jwk()]})
    verifier = TokenVerifier(
        StaticKeys(keyset),
        issuers=[ISSUER],
        audience=AUDIENCE,
        algorithms=["EdDSA", "ES256"],
        clock=clock,
    )
    es256 = jwt.encode(claims(), ec_private, algorithm="ES256", headers={"kid": "ec-1"})
    assert (await verifier.verify(es256)).subject == "u-1"
    eddsa_on_ec_kid = sign(key, claims(), kid="ec-1")
    assert (await rejected(verifier, eddsa_on_ec_kid)).reason == "bad_algorithm"
    es256_on_ed_kid = jwt.encode(claims(), ec_private, algorithm="ES256", headers={"kid": key.kid})
    assert (await rejected(verifier, es256_on_ed_kid)).reason == "bad_algorithm"
    eddsa_only = TokenVerifier(StaticKeys(keyset), issuers=[ISSUER], audience=AUDIENCE, clock=clock)
    assert (await rejected(eddsa_only, es256)).reason == "bad_algorithm"


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", "a.b", "ey.ey.ey", "é.é.é", f"{b64(b'[1]')}.{b64(b'{}')}.x"],
)
async def test_malformed(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        await verifier.verify(token)
    assert caught.value.reason == "malformed"


async def test_too_large_is_rejected_before_any_key_lookup(
    key: SigningKey, keys: CountingKeys, clock: Clock
) -> None:
    verifier = TokenVerifier(
        keys, issuers=[ISSUER], audience=AUDIENCE, max_token_bytes=1024, clock=clock
    )
    token = sign(key, claims(padding="x" * 1024))
    assert (await rejected(verifier, token)).reason == "too_large"
    assert (await rejected(verifier, "x" * 10_000)).reason == "too_large"
    assert keys.lookups == 0
    assert (await verifier.verify(sign(key, claims()))).subject == "u-1"


@pytest.mark.parametrize(
    "algorithms", [("none",), ("HS256",), ("EdDSA", "HS256"), ("RS256",), (), "EdDSA"]
)
def test_verifier_accepts_only_asymmetric_algorithms(keys: CountingKeys, algorithms: Any) -> None:
    with pytest.raises(ValueError, match="algorithms"):
        TokenVerifier(keys, issuers=[ISSUER], audience=AUDIENCE, algorithms=algorithms)


# --- verifier: cache -----------------------------------------------------------------------


async def test_cached_token_skips_verification_but_expires(
    signer: TokenSigner, verifier: TokenVerifier, keys: CountingKeys, clock: Clock
) -> None:
    token = signer.issue("u-1", ttl=60).value
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert second is first
    assert verifier.cache_info() == (1, 1)
    assert keys.lookups == 1  # the second call checked no signature

    clock.now = NOW + 60 + 5
    assert (await rejected(verifier, token)).reason == "expired"
    assert verifier.cache_info() == (2, 1)
    assert (await rejected(verifier, token)).reason == "expired"  # evicted: verified afresh
    assert verifier.cache_info() == (2, 2)


async def test_failures_are_not_cached_and_the_cache_is_bounded(
    key: SigningKey, keys: CountingKeys, clock: Clock
) -> None:
    verifier = TokenVerifier(keys, issuers=[ISSUER], audience=AUDIENCE, cache_size=2, clock=clock)
    bad = sign(key, claims(iss="evil"))
    for _ in range(2):
        await rejected(verifier, bad)
    assert verifier.cache_info() == (0, 2)
    tokens = [sign(key, claims(sub=f"u-{n}")) for n in range(3)]
    for token in tokens:
        await verifier.verify(token)
    await verifier.verify(tokens[2])
    await verifier.verify(tokens[0])  # evicted by tokens[2]: verified again
    assert verifier.cache_info() == (1, 6)


# --- remote JWKS ---------------------------------------------------------------------------


class Issuer:
    """A JWKS endpoint whose keys and failures the test controls; counts fetches."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def fetch(self) -> Mapping[str, Any]:
        self.fetches += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("users service unavailable")
        return jwks(*self.keys)


def remote(issuer: Issuer, clock: Callable[[], float]) -> RemoteJwks:
    fetch: Callable[[], Awaitable[Mapping[str, Any]]] = issuer.fetch
    return RemoteJwks(fetch, min_refresh_interval=30.0, clock=clock)


async def test_unknown_kid_refreshes_once_then_rotation_works(clock: Clock) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    issuer = Issuer(old)
    jwks_clock = Clock(100.0)
    source = remote(issuer, jwks_clock)
    verifier = TokenVerifier(source, issuers=[ISSUER], audience=AUDIENCE, clock=clock)
    old_token = sign(old, claims(sub="old"))
    assert (await verifier.verify(old_token)).subject == "old"
    assert issuer.fetches == 1

    jwks_clock.now += 3600
    assert (await verifier.verify(sign(old, claims(sub="old-1")))).subject == "old-1"
    assert issuer.fetches == 1  # a known kid never fetches

    issuer.keys = [new, old]  # rotation: the issuer signs with the new key, still publishes old
    new_token = sign(new, claims(sub="new"))
    assert (await verifier.verify(new_token)).subject == "new"
    assert issuer.fetches == 2
    assert (await verifier.verify(sign(old, claims(sub="old-2")))).subject == "old-2"
    assert (await verifier.verify(sign(new, claims(sub="new-2")))).subject == "new-2"
    assert issuer.fetches == 2


async def test_refresh_is_single_flight_and_rate_limited() -> None:
    key, late = SigningKey.generate(), SigningKey.generate()
    issuer = Issuer(key)
    clock = Clock(100.0)
    source = remote(issuer, clock)
    issuer.gate = asyncio.Event()
    lookups = [asyncio.create_task(source.key(key.kid)) for _ in range(10)]
    lookups += [asyncio.create_task(source.key(f"made-up-{n}")) for n in range(10)]
    await issuer.started.wait()
    issuer.gate.set()
    found = await asyncio.gather(*lookups)
    assert issuer.fetches == 1
    assert all(k is not None for k in found[:10]) and all(k is None for k in found[10:])

    issuer.keys = [key, late]
    assert await source.key(late.kid) is None  # published, but the last refresh is too recent
    assert await asyncio.gather(*(source.key(f"made-up-{n}") for n in range(20))) == [None] * 20
    assert issuer.fetches == 1
    clock.now += 30
    assert await source.key(late.kid) is not None
    assert issuer.fetches == 2


async def test_failing_fetch_says_unavailable_and_retries_until_loaded(
    key: SigningKey,
) -> None:
    issuer = Issuer(key)
    issuer.fail = True
    source = remote(issuer, Clock(100.0))
    with capture_logs() as logs:
        # never loaded: no verdict on the token is possible yet (not "unknown key")
        with pytest.raises(KeySourceUnavailableError):
            await source.key(key.kid)
        with pytest.raises(KeySourceUnavailableError):  # and no rate limit yet
            await source.key(key.kid)
    assert issuer.fetches == 2
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "auth.jwks_refresh_failed"
    ] * 2
    issuer.fail = False
    assert await source.key(key.kid) is not None
    assert issuer.fetches == 3

    issuer.fail = True  # a later failure keeps the keys already known
    assert await source.key("made-up") is None
    assert await source.key(key.kid) is not None


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(key: SigningKey) -> None:
    issuer = Issuer(key)
    issuer.gate = asyncio.Event()
    source = remote(issuer, Clock(100.0))
    impatient = asyncio.create_task(source.key(key.kid))
    await issuer.started.wait()
    patient = asyncio.create_task(source.key(key.kid))
    impatient.cancel()
    issuer.gate.set()
    assert await patient is not None
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert issuer.fetches == 1


async def test_malformed_document_is_a_failed_refresh(key: SigningKey) -> None:
    async def fetch() -> Mapping[str, Any]:
        return {"keys": "nope"}

    source = RemoteJwks(fetch)
    with capture_logs() as logs, pytest.raises(KeySourceUnavailableError):
        await source.key(key.kid)
    assert any(e["event"] == "auth.jwks_refresh_failed" for e in logs)
