"""Access tokens of the users service: EdDSA JWTs, the key that signs them, their lifetimes.

The users service is the issuer (``iss`` ``shop.users``) of access tokens for the whole shop
(``aud`` ``shop``). They are signed with an Ed25519 key kept at ``<data_dir>/keys/users-ed25519.pem``
(created on first start, mode 0600) and verified by anyone holding the public half, published
by ``GetJwks`` and at ``/.well-known/jwks.json``. Every process of one deployment that shares
the data directory signs with the same key, so tokens verify across restarts and replicas.

Example::

    key = load_signing_key(settings.data_dir)
    token = access_token_signer(key).issue(user.id, roles=user.roles)
    document = jwks(key)          # {"keys": [{"kty": "OKP", "crv": "Ed25519", ...}]}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from grpckit.auth import SigningKey, TokenSigner

#: ``iss`` of every access token the users service signs.
ISSUER = "shop.users"
#: ``aud`` of those tokens: every shop service accepts them.
AUDIENCE = "shop"
#: Access tokens are short-lived: disabling a user reaches other processes within this time.
ACCESS_TTL_SECONDS = 900
#: Refresh tokens live 30 days from their issue (each rotation starts a new 30 days).
REFRESH_TTL_SECONDS = 30 * 24 * 3600
#: Where the signing key lives, relative to ``Settings.data_dir``.
KEY_FILE = Path("keys") / "users-ed25519.pem"


def load_signing_key(data_dir: Path) -> SigningKey:
    """The users service's signing key under ``data_dir``, created on first use.

    Safe to call from several processes at once (they all end up with the same key); the
    service mounts it and the HTTP route serving ``/.well-known/jwks.json`` publishes it.

    Example: ``jwks(load_signing_key(settings.data_dir))``
    """
    return SigningKey.load_or_create(data_dir / KEY_FILE)


def access_token_signer(key: SigningKey, *, clock: Callable[[], float] = time.time) -> TokenSigner:
    """The signer of the shop's access tokens (issuer, audience and lifetime above).

    Example: ``access_token_signer(key).issue(user_id, roles=["customer"]).value``
    """
    return TokenSigner(
        key, issuer=ISSUER, audience=AUDIENCE, ttl=float(ACCESS_TTL_SECONDS), clock=clock
    )
