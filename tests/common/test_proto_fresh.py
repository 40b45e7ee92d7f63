"""The committed protobuf modules must be exactly what `make proto` generates from proto/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "common" / "proto"


def load_genproto():
    spec = importlib.util.spec_from_file_location("genproto", REPO / "tools" / "genproto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_protobuf_modules_match_a_fresh_generation(tmp_path):
    written = load_genproto().generate(tmp_path)
    names = sorted(path.name for path in written)
    assert names == ["federation_pb2.py", "federation_pb2.pyi"]
    stale = [
        name
        for name in names
        if not (COMMITTED / name).is_file()
        or (COMMITTED / name).read_bytes() != (tmp_path / name).read_bytes()
    ]
    assert not stale, (
        f"common/proto/{', '.join(stale)} is stale or missing: the generated protobuf code no "
        "longer matches proto/fedsilo/v1/federation.proto; run `make proto` and commit the result"
    )
