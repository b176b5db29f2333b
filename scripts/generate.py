"""Regenerate the Python code for every proto under proto/ into src/.

Messages (``_pb2.py``), typed stubs (``_pb2.pyi``, ``_pb2_grpc.pyi`` by mypy-protobuf) and gRPC
stubs (``_pb2_grpc.py``). Run through ``make generate``; ``make check`` fails when the committed
code differs from what this produces.

``buf/validate/validate.proto`` (the protovalidate rules our protos import) normally comes from
buf.build, which cannot be reached here. The installed ``protovalidate`` package — the runtime that
enforces the rules — embeds that file's serialized descriptor, so this script takes it from there:

* protoc reads it as a descriptor set (``--descriptor_set_in``) and generates
  ``src/buf/validate/validate_pb2.py`` (google.protobuf), which our ``_pb2`` modules import;
* ``--export-validate-proto DIR`` writes it back as ``DIR/buf/validate/validate.proto`` source for
  buf (``make lint-proto`` uses ``.third_party``). The source is printed from the descriptor and
  checked by compiling it again: the round trip must give the same descriptor.

Both follow the pinned protovalidate version, so a clean clone regenerates identical files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc_tools
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_encoding,
    text_format,
)
from google.protobuf.message import Message
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "src"
BIN = Path(sys.executable).parent
GENERATED_ROOTS = [
    OUT / "shop" / "api",
    OUT / "grpckit" / "api",
    OUT / "grpckit" / "testing" / "api",
    OUT / "buf",
]
VALIDATE_PROTO = "buf/validate/validate.proto"
BUF_PACKAGE_NOTE = '''"""Generated: ``buf.validate.validate_pb2`` for google.protobuf (do not edit).

buf/validate/validate.proto is protovalidate's schema, normally fetched from buf.build (which
cannot be reached here). scripts/generate.py generates this module from the descriptor that the
pinned ``protovalidate`` package embeds; the shop's ``_pb2`` modules import it.
"""
'''
WKT_INCLUDE = Path(grpc_tools.__file__).parent / "_proto"

FDP = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in FDP.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}
LABELS = {
    FDP.LABEL_OPTIONAL: "optional",
    FDP.LABEL_REQUIRED: "required",
    FDP.LABEL_REPEATED: "repeated",
}
MAX_FIELD = 536870912  # exclusive end of a message range that reads "max"
MAX_ENUM = 2147483647  # inclusive end of an enum range that reads "max"


def googleapis_include() -> Path:
    import google.type.money_pb2 as money

    return Path(money.__file__).resolve().parent.parent.parent


def validate_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """buf/validate/validate.proto exactly as the installed protovalidate embeds it."""
    try:
        import protovalidate
    except ImportError:
        raise SystemExit("protovalidate is not installed: run `make install`") from None
    raw = protovalidate.ViolationPb.desc().file.proto.to_binary()
    fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
    if fdp.name != VALIDATE_PROTO:
        raise SystemExit(f"protovalidate ships {fdp.name!r}, expected {VALIDATE_PROTO!r}")
    return fdp


class _Printer:
    """Prints a proto2 FileDescriptorProto (as protovalidate's validate.proto is) as source."""

    def __init__(self, fdp: descriptor_pb2.FileDescriptorProto) -> None:
        self.fdp = fdp
        pool = descriptor_pool.DescriptorPool()
        for dep in _wkt_descriptors():
            pool.Add(dep)
        pool.Add(fdp)  # knows the custom options (extensions) that fdp declares and uses
        self.pool = pool

    def options(self, options: Message) -> list[str]:
        """`name = value` for every option set, custom (extension) options included."""
        if not options.ByteSize():
            return []
        cls = message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName(options.DESCRIPTOR.full_name)
        )
        parsed = cls.FromString(options.SerializeToString())
        out = []
        for field, value in parsed.ListFields():
            name = f"({field.full_name})" if field.is_extension else field.name
            values = value if field.is_repeated else [value]
            out.extend(f"{name} = {_option_value(field, v)}" for v in values)
        return out

    def render(self) -> str:
        f = self.fdp
        if f.syntax not in ("", "proto2"):
            raise SystemExit(f"{f.name}: only proto2 can be printed, got {f.syntax!r}")
        lines = [
            f"// {f.name}: printed by scripts/generate.py from the descriptor that the installed",
            "// protovalidate package embeds (buf.build cannot be reached here). Do not edit.",
            'syntax = "proto2";',
            "",
            f"package {f.package};",
            "",
        ]
        lines += [f'import "{dep}";' for dep in f.dependency]
        lines += [f"option {o};" for o in self.options(f.options)]
        for ext_block in _group_extensions(f.extension):
            lines += ["", f"extend {ext_block[0].extendee} {{"]
            lines += [f"  {self.field(x, labelled=True)}" for x in ext_block]
            lines.append("}")
        for enum in f.enum_type:
            lines += ["", *self.enum(enum)]
        for msg in f.message_type:
            lines += ["", *self.message(msg)]
        return "\n".join(lines) + "\n"

    def field(self, field: descriptor_pb2.FieldDescriptorProto, *, labelled: bool) -> str:
        kind = SCALARS.get(field.type) or field.type_name
        label = f"{LABELS[field.label]} " if labelled else ""
        opts = self.options(field.options)
        if field.HasField("default_value"):
            raise SystemExit(f"{field.name}: default values are not supported by this printer")
        if field.json_name and field.json_name != _json_name(field.name):
            opts.insert(0, f'json_name = "{field.json_name}"')
        suffix = f" [{', '.join(opts)}]" if opts else ""
        return f"{label}{kind} {field.name} = {field.number}{suffix};"

    def enum(self, enum: descriptor_pb2.EnumDescriptorProto) -> list[str]:
        body = [f"option {o};" for o in self.options(enum.options)]
        for value in enum.value:
            opts = self.options(value.options)
            suffix = f" [{', '.join(opts)}]" if opts else ""
            body.append(f"{value.name} = {value.number}{suffix};")
        for r in enum.reserved_range:
            body.append(f"reserved {_range(r.start, r.end + 1, MAX_ENUM + 1)};")
        body += [f'reserved "{n}";' for n in enum.reserved_name]
        return [f"enum {enum.name} {{", *(f"  {b}" for b in body), "}"]

    def message(self, msg: descriptor_pb2.DescriptorProto) -> list[str]:
        if msg.nested_type or msg.enum_type or msg.extension:
            raise SystemExit(f"{msg.name}: nested declarations are not supported by this printer")
        body = [f"option {o};" for o in self.options(msg.options)]
        done: set[int] = set()
        for field in msg.field:
            if not field.HasField("oneof_index"):
                body.append(self.field(field, labelled=True))
            elif field.oneof_index not in done:
                done.add(field.oneof_index)
                body += self.oneof(msg, field.oneof_index)
        for r in msg.extension_range:
            body.append(f"extensions {_range(r.start, r.end, MAX_FIELD)};")
        for r in msg.reserved_range:
            body.append(f"reserved {_range(r.start, r.end, MAX_FIELD)};")
        body += [f'reserved "{n}";' for n in msg.reserved_name]
        return [f"message {msg.name} {{", *(f"  {b}" for b in body), "}"]

    def oneof(self, msg: descriptor_pb2.DescriptorProto, index: int) -> list[str]:
        decl = msg.oneof_decl[index]
        body = [f"option {o};" for o in self.options(decl.options)]
        body += [
            self.field(f, labelled=False)
            for f in msg.field
            if f.HasField("oneof_index") and f.oneof_index == index
        ]
        return [f"oneof {decl.name} {{", *(f"  {b}" for b in body), "}"]


def _wkt_descriptors() -> Iterator[descriptor_pb2.FileDescriptorProto]:
    from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

    for module in (descriptor_pb2, duration_pb2, field_mask_pb2, timestamp_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        yield proto


def _option_value(field: object, value: object) -> str:
    if isinstance(value, Message):
        return "{ " + text_format.MessageToString(value, as_one_line=True) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | bytes):
        return '"' + text_encoding.CEscape(value, as_utf8=False) + '"'
    enum_type = getattr(field, "enum_type", None)
    if enum_type is not None and isinstance(value, int):
        return str(enum_type.values_by_number[value].name)
    return str(value)


def _group_extensions(
    extensions: list[descriptor_pb2.FieldDescriptorProto],
) -> Iterator[list[descriptor_pb2.FieldDescriptorProto]]:
    """Consecutive extensions of one extendee form one `extend` block (keeps their order)."""
    block: list[descriptor_pb2.FieldDescriptorProto] = []
    for ext in extensions:
        if block and block[-1].extendee != ext.extendee:
            yield block
            block = []
        block.append(ext)
    if block:
        yield block


def _range(start: int, end_exclusive: int, max_exclusive: int) -> str:
    if end_exclusive == start + 1:
        return str(start)
    last = "max" if end_exclusive == max_exclusive else str(end_exclusive - 1)
    return f"{start} to {last}"


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _compile(source_root: Path, name: str, include_wkt: bool = True) -> bytes:
    """Compile one file with protoc into a serialized FileDescriptorSet (no imports)."""
    out = source_root / "out.binpb"
    args = ["protoc", f"-I{source_root}", f"-I{WKT_INCLUDE}", f"--descriptor_set_out={out}", name]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc could not compile the printed {name}")
    return out.read_bytes()


def validate_source(fdp: descriptor_pb2.FileDescriptorProto) -> str:
    """validate.proto as source, verified: compiling it gives back ``fdp``."""
    source = _Printer(fdp).render()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / VALIDATE_PROTO
        path.parent.mkdir(parents=True)
        path.write_text(source)
        again = descriptor_pb2.FileDescriptorSet.FromString(_compile(Path(tmp), VALIDATE_PROTO))
    expected = descriptor_pb2.FileDescriptorProto()
    expected.CopyFrom(fdp)
    expected.ClearField("source_code_info")
    if again.file[0] != expected:
        raise SystemExit(f"the printed {VALIDATE_PROTO} does not compile back to its descriptor")
    return source


def export_validate_proto(directory: Path) -> Path:
    """Write buf/validate/validate.proto under ``directory`` (a local buf module)."""
    target = directory / VALIDATE_PROTO
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(validate_source(validate_descriptor()))
    return target


def _protoc(args: list[str]) -> None:
    code = protoc.main(["protoc", *args])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def generate() -> int:
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    for root in GENERATED_ROOTS:
        for old in root.rglob("*_pb2*.py*") if root.exists() else []:
            old.unlink()
    mypy_plugins = [
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        validate_set = Path(tmp) / "validate.binpb"
        validate_set.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=[validate_descriptor()]).SerializeToString()
        )
        common = [f"-I{PROTO}", f"-I{WKT_INCLUDE}", f"-I{googleapis_include()}"]
        common.append(f"--descriptor_set_in={validate_set}")
        # validate.proto has no services: messages and their stubs only
        _protoc(
            [*common, *mypy_plugins, f"--python_out={OUT}", f"--mypy_out={OUT}", VALIDATE_PROTO]
        )
        _protoc(
            [
                *common,
                *mypy_plugins,
                f"--python_out={OUT}",
                f"--grpc_python_out={OUT}",
                f"--mypy_out={OUT}",
                f"--mypy_grpc_out={OUT}",
                *files,
            ]
        )
    for f in [*files, VALIDATE_PROTO]:
        node = OUT / Path(f).parent
        while node != OUT:
            (node / "__init__.py").touch()
            node = node.parent
    (OUT / "buf" / "__init__.py").write_text(BUF_PACKAGE_NOTE)
    print(f"generated {len(files)} proto files and {VALIDATE_PROTO} into {OUT}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--export-validate-proto",
        metavar="DIR",
        type=Path,
        help=f"only write {VALIDATE_PROTO} source under DIR (a local buf module) and exit",
    )
    args = parser.parse_args()
    if args.export_validate_proto is not None:
        print(f"wrote {export_validate_proto(args.export_validate_proto)}")
        return 0
    return generate()


if __name__ == "__main__":
    sys.exit(main())
