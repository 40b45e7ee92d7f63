"""The server fixes glibc's mmap threshold so freed message buffers go back to the system."""

from __future__ import annotations

import platform

import pytest

from fedsilo.common.allocator import return_big_blocks_promptly


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_threshold_is_set_on_glibc():
    assert return_big_blocks_promptly() is True
