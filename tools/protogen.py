"""Generate the Python protobuf/gRPC code for proto/sluiceway/v1 into libs/proto/src."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = ROOT / "libs" / "proto" / "src"


def generate(out: Path) -> list[Path]:
    """Run protoc over every .proto file; returns the generated files."""
    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(PROTO_ROOT.glob("sluiceway/v1/*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    pkg = out / "sluiceway" / "v1"
    (pkg / "__init__.py").write_text(
        '"""Generated protobuf/gRPC code (make proto); do not edit."""\n'
    )
    return sorted(p for p in pkg.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
