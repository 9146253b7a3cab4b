"""Concurrent runs never share a folder (issue 27 item 5, first half)."""

from __future__ import annotations


def test_two_identical_runs_in_the_same_second_get_their_own_folders(monkeypatch):
    """hydra.run.dir ends in ${unique_id:}: drawn once per composed config, so Hydra, run.log and the
    records agree on one folder, and a second identical command gets another."""
    from pipelines.cli import compose_command

    monkeypatch.setattr("hydra.core.utils.datetime", _FrozenClock)  # the same second for both ${now:}
    first, second = (compose_command(["quant=fp8"])[1] for _ in range(2))
    assert first.hydra.run.dir == first.hydra.run.dir  # stable within one run
    assert first.hydra.run.dir != second.hydra.run.dir
    assert first.hydra.run.dir.rsplit("-", 1)[0] == second.hydra.run.dir.rsplit("-", 1)[0]


class _FrozenClock:
    @staticmethod
    def now():
        import datetime

        return datetime.datetime(2026, 12, 4, 14, 0, 0)
