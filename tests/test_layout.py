"""The layout rules: server and client never import each other (nor the server report/); the wheel
installs one namespace."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imported_modules(folder: Path) -> set[str]:
    """Every module named by an import statement under ``folder``."""
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
    return names


# The server writes metrics files; it never imports report/, which reads them (issue 10).
@pytest.mark.parametrize(
    ("role", "forbidden"), [("server", "client"), ("client", "server"), ("server", "report")]
)
def test_a_role_never_imports_what_it_must_not(role: str, forbidden: str) -> None:
    names = imported_modules(REPO / role)
    assert any(name.startswith("fedsilo.common") for name in names)
    offending = sorted(n for n in names if n.startswith(f"fedsilo.{forbidden}"))
    assert offending == [], f"{role}/ imports {offending}"


def test_the_server_builds_protobuf_messages_in_messages_py_only() -> None:
    # Issue 10: one module turns what the job decided into what crosses the wire.
    builders = {
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in (REPO / "server").rglob("*.py")
        if path.name != "messages.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "pb"
        and node.func.attr[:1].isupper()
    }
    assert builders == set(), f"build these in server/messages.py: {sorted(builders)}"


def test_common_imports_neither_daemon() -> None:
    names = imported_modules(REPO / "common")
    assert not [n for n in names if n.startswith(("fedsilo.server", "fedsilo.client"))]


def test_wheel_installs_everything_under_the_fedsilo_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("fedsilo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level <= {"fedsilo", next(n for n in top_level if n.endswith(".dist-info"))}
    for module in (
        "fedsilo/server/job.py",
        "fedsilo/client/session.py",
        "fedsilo/common/tensor_stream.py",
        "fedsilo/common/proto/federation_pb2.py",
        "fedsilo/tasks/builtin/synthetic.py",
        "fedsilo/server/strategies/fedavg.py",
    ):
        assert module in names


PRODUCTION_FOLDERS = ("common", "tasks", "server", "client", "sim", "report", "provision", "deploy")
MAX_MODULE_LINES = 420  # STYLE.md: modules stay small (a few hundred lines)


def test_no_production_module_is_over_the_size_limit() -> None:
    too_long = {
        str(path.relative_to(REPO)): length
        for folder in PRODUCTION_FOLDERS
        for path in (REPO / folder).rglob("*.py")
        if "proto" not in path.parts
        and (length := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}, f"split these modules: {too_long}"
