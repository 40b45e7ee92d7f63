"""LEAF-format JSON folders load per user, merged over files, with counts checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedsilo.common.errors import TaskLoadError
from fedsilo.tasks.datasets.leaf import load_leaf, read_leaf_file


def leaf_file(path: Path, user_data: dict[str, dict[str, list[Any]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    users = list(user_data)
    content = {
        "users": users,
        "num_samples": [len(user_data[user]["y"]) for user in users],
        "user_data": user_data,
    }
    path.write_text(json.dumps(content))


def test_load_leaf_returns_each_users_train_and_test_samples(tmp_path):
    leaf_file(tmp_path / "train" / "a.json", {"u2": {"x": [[1, 2], [3, 4]], "y": [0, 1]}})
    leaf_file(tmp_path / "train" / "b.json", {"u1": {"x": ["to be or"], "y": [" "]}})
    leaf_file(tmp_path / "train" / "c.json", {"u2": {"x": [[5, 6]], "y": [1]}})
    leaf_file(tmp_path / "test" / "a.json", {"u2": {"x": [[7, 8]], "y": [0]}})
    users = load_leaf(tmp_path)
    assert list(users) == ["u1", "u2"]
    assert users["u2"].train.x == [[1, 2], [3, 4], [5, 6]]
    assert users["u2"].train.y == [0, 1, 1]
    assert (users["u2"].test.x, users["u2"].test.y) == ([[7, 8]], [0])
    assert users["u1"].train.y == [" "] and users["u1"].test.x == []


def test_counts_that_disagree_with_num_samples_are_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"users": ["u"], "num_samples": [3], "user_data": {"u": {"x": [1], "y": [0]}}})
    )
    with pytest.raises(TaskLoadError, match="num_samples says 3"):
        read_leaf_file(path)


def test_files_that_are_not_leaf_json_are_refused(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(TaskLoadError, match="not a LEAF JSON file"):
        read_leaf_file(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"users": ["u"], "num_samples": [1]}))
    with pytest.raises(TaskLoadError, match="not a LEAF JSON file"):
        read_leaf_file(tmp_path / "y.json")


def test_missing_split_folders_are_named(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(TaskLoadError, match="test"):
        load_leaf(tmp_path)
