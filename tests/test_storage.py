"""pipelines/storage.py: a scratch directory never outlives an interrupted write.

pytest tests/test_storage.py
"""

from __future__ import annotations

import os

import pytest

from pipelines import storage


def test_interrupt_right_after_the_scratch_is_made_leaves_nothing(tmp_path, monkeypatch):
    # Ctrl-C landing just after the mkdir (tests/test_new_user.py's interrupt can, on a busy machine).
    make = os.mkdir

    def make_then_interrupt(path, *args, **kwargs):
        make(path, *args, **kwargs)
        if str(path).endswith(".partial"):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "mkdir", make_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with storage.atomic_directory(tmp_path / "result"):
            pytest.fail("the interrupt is raised before the body runs")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_in_the_body_leaves_neither_result_nor_scratch(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with storage.atomic_directory(tmp_path / "result") as scratch:
            (scratch / "half.json").write_text("{")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_finished_block_becomes_the_result(tmp_path):
    with storage.atomic_directory(tmp_path / "result") as scratch:
        (scratch / "done.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["result"] and (tmp_path / "result" / "done.json").is_file()
