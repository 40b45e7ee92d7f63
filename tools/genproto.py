"""Generate the protobuf classes under common/proto from proto/ (what `make proto` runs).

The generated files are committed; `tests/common/test_proto_fresh.py` regenerates them into a
temporary folder and fails when the committed ones are stale.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PROTO_FILES = ["fedsilo/v1/federation.proto"]
OUTPUT_DIR = REPO / "common" / "proto"
SUFFIXES = ("_pb2.py", "_pb2.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) and copy the generated modules flat into out_dir."""
    from grpc_tools import protoc  # dev dependency; imported here so the runtime never needs it

    include = Path(protoc.__file__).parent / "_proto"
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            *(str(PROTO_ROOT / name) for name in PROTO_FILES),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in PROTO_FILES:
            stem = Path(name).with_suffix("")
            for suffix in SUFFIXES:
                source = Path(tmp) / f"{stem}{suffix}"
                target = out_dir / source.name
                shutil.copyfile(source, target)
                written.append(target)
    return written


def main() -> None:
    """Regenerate the committed stubs (or write them to --out)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path, file=sys.stderr)


if __name__ == "__main__":
    main()
