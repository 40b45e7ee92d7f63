"""The image builds from the repository as it is, proven without a Docker engine: the files the
Dockerfile's COPY lines bring in (through the build context's ignore file) are rebuilt in a
folder, and the package installs from exactly those files and runs."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tests.integration.conftest import REPO
from tests.integration.docker_image import (
    compile_pattern,
    context_files,
    ignore_file_for,
    is_ignored,
    read_ignore_file,
    rebuild_image_files,
)

DOCKERFILE = REPO / "deploy" / "Dockerfile"
PACKAGES = ("common", "tasks", "server", "client", "provision", "report", "sim")
INSTALL_TIMEOUT = 300


def run(*command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end (bounded), capturing its output."""
    return subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=INSTALL_TIMEOUT
    )


def package_folders() -> dict[str, str]:
    """pyproject.toml's package-dir: import name -> folder."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    mapping = pyproject["tool"]["setuptools"]["package-dir"]
    assert isinstance(mapping, dict)
    return mapping


def missing_from_image(dockerfile: Path, image: Path) -> list[str]:
    """Rebuild the image's files from ``dockerfile``; return package folders it lacks."""
    parsed = rebuild_image_files(REPO, dockerfile, image)
    app = image / parsed.copies[0].workdir.lstrip("/")
    return sorted(
        folder
        for folder in package_folders().values()
        if not (app / folder / "__init__.py").is_file()
    )


def test_the_copy_lines_bring_in_every_package_folder(tmp_path: Path) -> None:
    assert set(package_folders().values()) >= set(PACKAGES)
    assert missing_from_image(DOCKERFILE, tmp_path / "image") == []


def test_a_dockerfile_missing_a_package_folder_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "deploy" / "Dockerfile"
    broken.parent.mkdir()
    text = DOCKERFILE.read_text()
    assert "COPY tasks/ tasks/\n" in text
    broken.write_text(text.replace("COPY tasks/ tasks/\n", ""))
    (tmp_path / "deploy" / "Dockerfile.dockerignore").write_text(
        ignore_file_for(REPO, DOCKERFILE).read_text()
    )
    assert missing_from_image(broken, tmp_path / "image") == ["tasks"]


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_the_package_installs_from_the_image_files_alone_and_runs(tmp_path: Path) -> None:
    parsed = rebuild_image_files(REPO, DOCKERFILE, tmp_path / "image")
    app = tmp_path / "image" / "app"
    assert parsed.copies[0].workdir == "/app"
    wheels = tmp_path / "wheels"
    pip = (sys.executable, "-m", "pip")
    built = run(
        *(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"),
        *("--wheel-dir", str(wheels), str(app)),
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("fedsilo-*.whl")

    # A fresh environment that holds only this wheel of fedsilo; its dependencies (torch, grpc)
    # come from this venv's site-packages through a plain .pth line, which does not run this
    # venv's own .pth files (so the editable install of the checkout stays out).
    env_dir = tmp_path / "env"
    assert run(sys.executable, "-m", "venv", "--without-pip", str(env_dir)).returncode == 0
    python = str(env_dir / "bin" / "python")
    where = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    site = Path(where.stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = run(
        *(*pip, "--python", python, "install", "--no-deps", "--no-index", "--quiet", str(wheel))
    )
    assert installed.returncode == 0, installed.stderr

    probe = (
        "import importlib, json; "
        f"print(json.dumps({{m: importlib.import_module('fedsilo.' + m).__file__ "
        f"for m in {list(PACKAGES)!r}}}))"
    )
    imported = run(python, "-c", probe)
    assert imported.returncode == 0, imported.stderr
    for module, file in json.loads(imported.stdout).items():
        assert Path(file).is_relative_to(site), f"fedsilo.{module} came from {file}"
    helped = run(str(env_dir / "bin" / "fl-server"), "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--job-id" in helped.stdout


def test_both_ignore_files_agree() -> None:
    buildkit = ignore_file_for(REPO, DOCKERFILE)
    assert buildkit == REPO / "deploy" / "Dockerfile.dockerignore"
    assert buildkit.read_text() == (REPO / ".dockerignore").read_text()


def test_certificates_runs_venv_and_git_stay_out_of_the_build_context(tmp_path: Path) -> None:
    wanted = ["pyproject.toml", "README.md", "common/codec.py", "deploy/healthcheck.py"]
    unwanted = [
        "certs/ca-key/ca.key",
        "deploy/certs/server/server.key",
        "deploy/certs/org-a/client.pem",
        "server/certs/server.pem",  # a bundle made inside a copied folder
        "client/org-a.key",
        "runs/job-1/metrics.jsonl",
        "sim/runs/sim/model.pt",
        ".venv/bin/python",
        ".git/config",
        "common/__pycache__/codec.cpython-311.pyc",
        "fedsilo.egg-info/PKG-INFO",
        "tests/test_layout.py",
        "deploy/netns.py",
    ]
    for name in wanted + unwanted:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    patterns = read_ignore_file(ignore_file_for(REPO, DOCKERFILE))
    assert context_files(tmp_path, patterns) == set(wanted)


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        (["**"], "a/b/c.py", True),
        (["**", "!common/"], "common/x/y.py", False),  # a matching parent re-includes all below
        (["**", "!common/", "**/__pycache__"], "common/__pycache__/y.pyc", True),
        (["*.key"], "a/b.key", False),  # * never crosses a folder
        (["**/*.key"], "b.key", True),  # **/ also matches no folder at all
        (["docs"], "docs/x/y.md", True),
        (["/docs/"], "docs/y.md", True),  # leading and trailing slashes are cleaned away
        (["a?c"], "a/c", False),
        (["!x", "x"], "x", True),  # the last matching pattern wins
    ],
)
def test_ignore_patterns_follow_dockers_rules(
    patterns: list[str], path: str, ignored: bool
) -> None:
    assert is_ignored(path, [compile_pattern(p) for p in patterns]) is ignored
