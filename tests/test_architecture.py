"""The dependency rules of the layout, enforced.

- grpckit never imports shop.
- A shop service imports only grpckit, the generated contracts (shop.api) and shop.common; never
  another service's package.
- Domain modules import nothing of grpc.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
SERVICES = ["users", "catalog", "orders", "payments", "analytics", "gateway"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def python_files(package: Path) -> list[Path]:
    return [p for p in package.rglob("*.py") if "_pb2" not in p.name]


def test_grpckit_never_imports_shop() -> None:
    offenders = {
        str(p.relative_to(SRC)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "shop")
        for p in python_files(SRC / "grpckit")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("service", SERVICES)
def test_services_do_not_import_each_other(service: str) -> None:
    others = {f"shop.{s}" for s in SERVICES if s != service}
    bad = {}
    for path in python_files(SRC / "shop" / service):
        hits = sorted(
            m
            for m in imported_modules(path)
            if any(m == o or m.startswith(o + ".") for o in others)
        )
        if hits:
            bad[str(path.relative_to(SRC))] = hits
    assert bad == {}


@pytest.mark.parametrize("service", SERVICES)
def test_domain_has_no_grpc(service: str) -> None:
    domain = SRC / "shop" / service / "domain.py"
    if not domain.exists():
        pytest.fail(f"{domain} is missing: every service keeps its rules in domain.py")
    grpc_imports = sorted(
        m for m in imported_modules(domain) if m.split(".")[0] in {"grpc", "grpckit"}
    )
    assert grpc_imports == []


def test_grpckit_public_surface_is_sorted_and_complete() -> None:
    import grpckit

    assert list(grpckit.__all__) == sorted(grpckit.__all__)
    missing = [name for name in grpckit.__all__ if not hasattr(grpckit, name)]
    assert missing == []
