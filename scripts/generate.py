"""Regenerate the Python code for every proto under proto/ into src/.

Messages (``_pb2.py``), typed stubs (``_pb2.pyi``, ``_pb2_grpc.pyi`` by mypy-protobuf) and gRPC
stubs (``_pb2_grpc.py``). Run through ``make generate``; ``make check`` fails when the committed
code differs from what this produces.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "src"
BIN = Path(sys.executable).parent
GENERATED_ROOTS = [OUT / "shop" / "api", OUT / "grpckit" / "testing" / "api"]


def googleapis_include() -> Path:
    import google.type.money_pb2 as money

    return Path(money.__file__).resolve().parent.parent.parent


def main() -> int:
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    for root in GENERATED_ROOTS:
        for old in root.rglob("*_pb2*.py*") if root.exists() else []:
            old.unlink()
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
        f"-I{googleapis_include()}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *files,
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        return int(code)
    for f in files:
        package_dir = OUT / Path(f).parent
        node = package_dir
        while node != OUT:
            (node / "__init__.py").touch()
            node = node.parent
    print(f"generated {len(files)} proto files into {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
