"""directory_lock: one holder at a time across open descriptors (as across processes), fail-fast or wait."""

from __future__ import annotations

import threading

import pytest

from dasgen.errors import DasgenError
from dasgen.io.lock import directory_lock


def test_a_busy_lock_fails_at_once_with_the_given_line_and_frees_on_exit(tmp_path):
    with directory_lock(tmp_path, busy="first"):
        with pytest.raises(DasgenError, match="^second holder$"):
            with directory_lock(tmp_path, busy="second holder"):
                pass
    with directory_lock(tmp_path, busy="free again"):  # released when the first block ended
        pass


def test_a_waiting_lock_blocks_until_the_holder_releases(tmp_path):
    waited, entered = threading.Event(), threading.Event()

    def second():
        with directory_lock(tmp_path, on_wait=waited.set):
            entered.set()

    with directory_lock(tmp_path, busy="first"):
        thread = threading.Thread(target=second)
        thread.start()
        assert waited.wait(timeout=10)  # it saw the lock busy and said so
        thread.join(timeout=0.3)
        assert thread.is_alive() and not entered.is_set()  # and it is still waiting
    thread.join(timeout=10)
    assert entered.is_set()


def test_errors_of_the_block_pass_through_untouched(tmp_path):
    with pytest.raises(ValueError, match="inner"):
        with directory_lock(tmp_path, busy="not this"):
            raise ValueError("inner")
