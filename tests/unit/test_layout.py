"""Backup ids sort by start time, also within one second (the newest backup is the greatest id)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from seedvault.format import layout


def test_ids_made_one_after_another_within_a_second_sort_in_that_order():
    ids = []
    for _ in range(50):
        ids.append(layout.new_backup_id())
        time.sleep(0.0012)  # a FULL and its DIFF, a backup and its retry: always at least a millisecond apart
    assert ids == sorted(ids)
    assert all(layout.is_backup_id(i) for i in ids)


def test_the_milliseconds_are_the_first_three_digits():
    at = datetime(2026, 12, 2, 7, 31, 39, 999_999, tzinfo=UTC)
    bid = layout.new_backup_id(at)
    assert bid.startswith("20261202T073139Z-3e7") and layout.is_backup_id(bid)
    assert layout.new_backup_id(at.replace(microsecond=0)) < bid
