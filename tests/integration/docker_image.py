"""What `docker build -f deploy/Dockerfile .` puts in the image, worked out without an engine.

Reads the Dockerfile's instructions (ENV, WORKDIR, COPY) and the build context's ignore file
with Docker's own rules, and lays out the files the COPY lines bring into the image in a plain
folder. The ignore rules are moby's patternmatcher (what BuildKit and the classic builder use):
patterns are cleaned paths; ``*`` and ``?`` stop at ``/``; ``**`` spans folders; a pattern that
matches a parent folder matches everything under it; ``!`` re-includes; the last match wins.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


class UnsupportedError(Exception):
    """The Dockerfile uses something this reader does not model; it says which."""


@dataclass(frozen=True)
class Copy:
    """One COPY: context sources, the destination, and the WORKDIR it is relative to."""

    sources: tuple[str, ...]
    dest: str
    workdir: str


@dataclass
class Dockerfile:
    """The instructions of a single-stage Dockerfile that decide the image's files and env."""

    copies: list[Copy] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"


def instructions(text: str) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def parse_env(arguments: str) -> dict[str, str]:
    """ENV's ``KEY=VALUE ...`` form (the legacy ``KEY VALUE`` form is refused)."""
    pairs = shlex.split(arguments)
    if not all("=" in pair for pair in pairs):
        raise UnsupportedError(f"ENV {arguments}: only the KEY=VALUE form is read")
    return dict(pair.split("=", 1) for pair in pairs)


def parse_copy(arguments: str, workdir: str) -> Copy:
    """COPY's shell or JSON form; flags other than --chown/--chmod are refused."""
    parts = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
    paths = []
    for part in parts:
        if part.startswith("--"):
            if not part.startswith(("--chown=", "--chmod=")):
                raise UnsupportedError(f"COPY {part} is not modelled")
            continue
        paths.append(part)
    if len(paths) < 2:
        raise UnsupportedError(f"COPY {arguments}: needs a source and a destination")
    return Copy(tuple(paths[:-1]), paths[-1], workdir)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Read ``path``; refuse what would make the image's files differ from what is modelled."""
    parsed = Dockerfile()
    stages = 0
    for keyword, arguments in instructions(path.read_text()):
        if keyword == "FROM":
            stages += 1
            if stages > 1:
                raise UnsupportedError("multi-stage builds are not modelled")
        elif keyword == "ENV":
            parsed.env.update(parse_env(arguments))
        elif keyword == "WORKDIR":
            parsed.workdir = str(PurePosixPath(parsed.workdir, arguments))
        elif keyword == "COPY":
            parsed.copies.append(parse_copy(arguments, parsed.workdir))
        elif keyword == "ADD":
            raise UnsupportedError("ADD (URLs, archives) is not modelled; use COPY")
    return parsed


@dataclass(frozen=True)
class Pattern:
    """One ignore-file line, compiled the way moby's patternmatcher compiles it."""

    regex: re.Pattern[str]
    exclusion: bool


def compile_pattern(line: str) -> Pattern:
    """Compile one pattern: ``**/`` -> any folders, ``*`` and ``?`` within one name."""
    exclusion = line.startswith("!")
    text = line[1:].strip() if exclusion else line
    cleaned = str(PurePosixPath("/", text))[1:] or "."
    out, i = "", 0
    while i < len(cleaned):
        char = cleaned[i]
        if cleaned.startswith("**", i):
            i += 2
            if cleaned.startswith("/", i):
                i += 1
            out += ".*" if i >= len(cleaned) else "(.*/)?"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char in "[]":
            out += char
        elif char == "\\" and i + 1 < len(cleaned):
            i += 1
            out += re.escape(cleaned[i])
        else:
            out += re.escape(char)
        i += 1
    return Pattern(re.compile(out), exclusion)


def read_ignore_file(path: Path) -> list[Pattern]:
    """The patterns of a .dockerignore (blank lines and ``#`` comments skipped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [compile_pattern(line) for line in lines if line and not line.startswith("#")]


def is_ignored(relative: str, patterns: list[Pattern]) -> bool:
    """Whether ``relative`` (a /-separated path in the context) is left out of the context."""
    parents = relative.split("/")[:-1]
    prefixes = ["/".join(parents[: i + 1]) for i in range(len(parents))]
    ignored = False
    for pattern in patterns:
        if pattern.exclusion != ignored:
            continue  # moby skips patterns that cannot change the outcome
        if pattern.regex.fullmatch(relative) or any(pattern.regex.fullmatch(p) for p in prefixes):
            ignored = not pattern.exclusion
    return ignored


def context_files(root: Path, patterns: list[Pattern]) -> set[str]:
    """Every file of ``root`` that the build context holds (relative, /-separated)."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and not is_ignored(path.relative_to(root).as_posix(), patterns)
    }


def ignore_file_for(root: Path, dockerfile: Path) -> Path:
    """The ignore file BuildKit uses: <Dockerfile>.dockerignore, else <context>/.dockerignore."""
    specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
    return specific if specific.is_file() else root / ".dockerignore"


def copy_into(image: Path, step: Copy, root: Path, context: set[str]) -> None:
    """Apply one COPY to the folder ``image`` (the image's /), from the context's files."""
    dest = PurePosixPath(step.workdir, step.dest)
    into_folder = step.dest.endswith("/") or len(step.sources) > 1
    for source in step.sources:
        if any(char in source for char in "*?["):
            raise UnsupportedError(f"COPY {source}: wildcards are not modelled")
        name = str(PurePosixPath("/", source))[1:]
        if name in context:  # a file: into the folder, or to the destination path itself
            target = dest / PurePosixPath(name).name if into_folder else dest
            files = {name: target}
        else:  # a folder: its contents (never the folder itself) go under the destination
            prefix = f"{name}/" if name else ""
            files = {f: dest / f[len(prefix) :] for f in context if f.startswith(prefix)}
        if not files:
            raise FileNotFoundError(f"COPY {source}: not in the build context")
        for file, target in files.items():
            out = image / str(target).lstrip("/")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / file, out)


def rebuild_image_files(root: Path, dockerfile: Path, image: Path) -> Dockerfile:
    """Lay out in ``image`` what the Dockerfile's COPY lines put into the image; return it."""
    parsed = parse_dockerfile(dockerfile)
    context = context_files(root, read_ignore_file(ignore_file_for(root, dockerfile)))
    for step in parsed.copies:
        copy_into(image, step, root, context)
    return parsed
