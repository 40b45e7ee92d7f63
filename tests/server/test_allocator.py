"""The server fixes glibc's mmap threshold so freed message buffers go back to the system."""

from __future__ import annotations

import platform

import pytest

from fedsilo.server.allocator import tune_for_streams


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_threshold_is_set_on_glibc():
    assert tune_for_streams(1 << 20) is True
