"""The terminal commands against a running shop: they log in first, as a user would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.clients import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.e2e.harness import ShopProcess

pytestmark = pytest.mark.e2e


def shop_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shop.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def test_order_token_and_watch_log_in(shop: ShopProcess) -> None:
    addr = shop.grpc_address
    ordered = await asyncio.to_thread(shop_cli, "order", "--addr", addr)
    assert ordered.returncode == 0, ordered.stderr
    assert "registered demo user" in ordered.stdout and "ORDER_STATUS_PAID" in ordered.stdout

    token = await asyncio.to_thread(
        shop_cli, "token", "--addr", addr, "--email", ADMIN_EMAIL, "--password", ADMIN_PASSWORD
    )
    assert token.returncode == 0, token.stderr
    access = token.stdout.strip()
    assert access.count(".") == 2

    # an existing user, by token from the environment
    ordered = await asyncio.to_thread(
        shop_cli, "order", "--addr", addr, "--json", env={"SHOP_TOKEN": access}
    )
    assert ordered.returncode == 0, ordered.stderr
    assert json.loads(ordered.stdout)["order"]["status"] == "ORDER_STATUS_PAID"

    watched = await asyncio.to_thread(
        shop_cli, "watch", "--addr", addr, "--count", "1", "--json", "--interval", "0.2",
        "--email", ADMIN_EMAIL, "--password", ADMIN_PASSWORD,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert len(watched.stdout.strip().splitlines()) == 1


async def test_bad_credentials_say_what_to_do(shop: ShopProcess) -> None:
    token = await asyncio.to_thread(
        shop_cli, "token", "--addr", shop.grpc_address, "--email", ADMIN_EMAIL,
        "--password", "wrong password",
    )  # fmt: skip
    assert token.returncode == 1
    assert "UNAUTHENTICATED" in token.stderr
    ordered = await asyncio.to_thread(
        shop_cli, "order", "--addr", shop.grpc_address, env={"SHOP_TOKEN": "not-a-jwt"}
    )
    assert ordered.returncode == 1
    assert "UNAUTHENTICATED" in ordered.stderr or "not a JWT" in ordered.stderr


def test_certs_refuses_to_overwrite(tmp_path: Path) -> None:
    first = shop_cli("certs", "--out", str(tmp_path / "c"))
    assert first.returncode == 0, first.stderr
    assert {p.name for p in (tmp_path / "c").iterdir()} >= {"ca.pem", "server.pem", "client.pem"}
    again = shop_cli("certs", "--out", str(tmp_path / "c"))
    assert again.returncode == 2 and "--force" in again.stderr
