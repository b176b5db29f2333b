"""The public surface: sorted, complete ``__all__`` lists; grpckit never imports shop."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import grpckit

PUBLIC_MODULES = [
    "grpckit",
    "grpckit.auth",
    "grpckit.call",
    "grpckit.client",
    "grpckit.defaults",
    "grpckit.errors",
    "grpckit.interceptors",
    "grpckit.logs",
    "grpckit.metrics",
    "grpckit.middleware",
    "grpckit.ratelimit",
    "grpckit.server",
    "grpckit.tls",
    "grpckit.tracing",
    "grpckit.testing",
]


def isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return 0, name
    return (1 if name[:1].isupper() else 2), name


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_resolvable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=isort_key)
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.{symbol}"


def test_top_level_exports_the_first_hour_api() -> None:
    for symbol in ["App", "ServerConfig", "StatusError", "dial", "select", "current_call"]:
        assert symbol in grpckit.__all__


def test_py_typed_is_shipped() -> None:
    assert (Path(grpckit.__file__).parent / "py.typed").exists()


def test_grpckit_never_imports_shop() -> None:
    root = Path(grpckit.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if any(
            line.lstrip().startswith(("import shop", "from shop"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
    for info in pkgutil.walk_packages(grpckit.__path__, "grpckit."):
        assert not info.name.startswith("shop")
