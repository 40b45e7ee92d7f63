"""The task identity both daemons compute: canonical options JSON (types kept) and its hash."""

from __future__ import annotations

import hashlib

import pytest

from fedsilo.common.task_identity import (
    TaskIdentity,
    TaskIdentityError,
    canonical_options,
    describe_difference,
    parse_options,
)


def test_canonical_json_sorts_keys_is_compact_and_keeps_integers_integers() -> None:
    text = canonical_options({"lr_scale": 0.5, "hidden": 32, "name": "é", "wide": 32.0, "on": True})
    assert text == '{"hidden":32,"lr_scale":0.5,"name":"\\u00e9","on":true,"wide":32.0}'
    options = parse_options(text)
    assert type(options["hidden"]) is int and type(options["wide"]) is float
    assert options["on"] is True


def test_the_hash_is_sha256_of_name_a_zero_byte_and_the_json() -> None:
    identity = TaskIdentity.of("pkg.mod:Task", {"b": 1, "a": "x"})
    # By hand, as docs/protocol.md states it:
    expected = hashlib.sha256(b'pkg.mod:Task\x00{"a":"x","b":1}').hexdigest()
    assert identity.options_json == '{"a":"x","b":1}'
    assert identity.hash == expected


def test_an_integer_and_the_same_float_are_different_tasks() -> None:
    assert TaskIdentity.of("t", {"hidden": 32}).hash != TaskIdentity.of("t", {"hidden": 32.0}).hash


def test_a_wire_identity_is_checked_for_hash_form_and_types() -> None:
    good = TaskIdentity.of("synthetic", {"max_samples": 40})
    assert TaskIdentity.from_wire(good.name, good.options_json, good.hash) == good
    with pytest.raises(TaskIdentityError, match="hash does not match"):
        TaskIdentity.from_wire("digits", good.options_json, good.hash)
    with pytest.raises(TaskIdentityError, match="canonical"):
        TaskIdentity.from_wire("t", '{"b":1, "a":2}', "0" * 64)
    with pytest.raises(TaskIdentityError, match="'args' is a list"):
        TaskIdentity.from_wire("t", '{"args":["touch","x"]}', "0" * 64)
    with pytest.raises(TaskIdentityError, match="JSON object"):
        TaskIdentity.from_wire("t", "[1]", "0" * 64)
    with pytest.raises(TaskIdentityError, match="not JSON"):
        TaskIdentity.from_wire("t", '{"x":NaN}', "0" * 64)
    with pytest.raises(TaskIdentityError, match="at most"):
        TaskIdentity.from_wire("t", '{"x":"' + "a" * (1 << 17) + '"}', "0" * 64)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), [1], {"x": 1}, None])
def test_options_must_be_finite_scalars(bad: object) -> None:
    with pytest.raises(TaskIdentityError, match="'x'"):
        canonical_options({"x": bad})


def test_the_difference_names_extra_missing_and_retyped_options() -> None:
    ours = TaskIdentity.of("t", {"hidden": 32, "depth": 2})
    theirs = TaskIdentity.of("t", {"hidden": 32.0, "args": "rm"})
    line = describe_difference(theirs, ours)
    assert "'args' (only the server's)" in line
    assert "'depth' (missing from the server's)" in line
    assert "'hidden': the server's 32.0, this client's 32" in line
    assert "\n" not in line
    other = describe_difference(TaskIdentity.of("subprocess:Popen", {}), ours)
    assert other == "the server asks for task 'subprocess:Popen', this client runs 't'"
