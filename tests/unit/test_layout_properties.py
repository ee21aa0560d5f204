"""Properties of backup ids that the catalog and retention rely on: they sort by start time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from seedvault.format import layout

moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC))


@given(moments, st.integers(min_value=1, max_value=10**9))
def test_a_later_start_sorts_after(first, delta_ms):
    """Ids started at least a millisecond apart sort by start time, whatever their random digits."""
    second = first + timedelta(milliseconds=delta_ms)
    if second.year > 9999:
        return
    a, b = layout.new_backup_id(first), layout.new_backup_id(second)
    assert layout.is_backup_id(a) and layout.is_backup_id(b)
    assert a < b


@given(moments)
def test_backup_id_of_every_key_kind(moment):
    bid = layout.new_backup_id(moment)
    for key in (layout.manifest_key(bid), layout.data_key(bid, "dump.zst"), layout.key_object(bid, "k-" + "0" * 16)):
        assert layout.backup_id_of(key) == bid
