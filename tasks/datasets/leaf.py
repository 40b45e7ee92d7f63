"""Read LEAF-format federated data (Caldas et al. 2018, https://leaf.cmu.edu).

A LEAF dataset folder has ``train/`` and ``test/`` subfolders of JSON files, each
``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``;
a user's samples may be spread over several files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsilo.common.errors import TaskLoadError


@dataclass
class UserSplit:
    """One user's samples in one split: inputs and labels, as read from the JSON."""

    x: list[Any] = field(default_factory=list)
    y: list[Any] = field(default_factory=list)


@dataclass
class UserData:
    """One user's training and test samples."""

    train: UserSplit = field(default_factory=UserSplit)
    test: UserSplit = field(default_factory=UserSplit)


def read_leaf_file(path: Path) -> dict[str, UserSplit]:
    """Return each user's samples in one LEAF JSON file, checked against its counts."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        users, counts, data = content["users"], content["num_samples"], content["user_data"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TaskLoadError(f"{path} is not a LEAF JSON file: {exc}") from exc
    if len(users) != len(counts):
        raise TaskLoadError(f"{path}: {len(users)} users but {len(counts)} sample counts")
    result: dict[str, UserSplit] = {}
    for user, count in zip(users, counts, strict=True):
        samples = data.get(user)
        if not isinstance(samples, dict) or "x" not in samples or "y" not in samples:
            raise TaskLoadError(f"{path}: user {user!r} has no x and y in user_data")
        if not len(samples["x"]) == len(samples["y"]) == count:
            raise TaskLoadError(
                f"{path}: user {user!r} has {len(samples['x'])} x and {len(samples['y'])} y, "
                f"num_samples says {count}"
            )
        result[str(user)] = UserSplit(list(samples["x"]), list(samples["y"]))
    return result


def load_leaf(root: Path) -> dict[str, UserData]:
    """Return every user's train and test samples from ``root/train`` and ``root/test``."""
    folders = {"train": root / "train", "test": root / "test"}
    missing = [str(folder) for folder in folders.values() if not folder.is_dir()]
    if missing:
        raise TaskLoadError(f"LEAF data needs the folders {', '.join(missing)}")
    users: dict[str, UserData] = {}
    for split, folder in folders.items():
        for path in sorted(folder.glob("*.json")):
            for user, samples in read_leaf_file(path).items():
                target: UserSplit = getattr(users.setdefault(user, UserData()), split)
                target.x.extend(samples.x)
                target.y.extend(samples.y)
    return dict(sorted(users.items()))
