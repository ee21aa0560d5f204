"""The freshness verdicts on given server facts, and the repository side on a local store of synthetic WAL.

The server-side rules are pure functions of what PostgreSQL reports (``ArchiverFacts``), so the edge cases
that a live server shows only by chance are pinned here: an idle server a few unimportant bytes into the
next segment, a segment switched a moment before the check, a backlog behind a recent archival, a role
without ``pg_monitor``. The integration test (tests/integration/test_wal_freshness.py) runs the real thing.
"""

from __future__ import annotations

import io
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from seedvault.crypto.keys import KeySource, generate_raw_key
from seedvault.errors import WalGap, WalStale
from seedvault.ops.wal_freshness import FreshnessReport, archived_through, judge_repository, judge_server
from seedvault.repository import Repository
from seedvault.sources.postgres.archiver import ArchiverFacts
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.store import WalStore
from seedvault.storage.local import LocalStorage

SEG = 1 << 20  # small segments keep the synthetic store quick
SYSID = 7400000000000000001
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def seg(segno: int, tli: int = 1) -> str:
    return wn.segment_name(tli, segno, SEG)


def facts(**kw) -> ArchiverFacts:
    """A healthy primary: segment 3 archived 10 s ago, writing at the start of segment 4."""
    base = ArchiverFacts(
        where="postgres@db:5432/postgres",
        system_id=str(SYSID),
        in_recovery=False,
        archive_mode="on",
        archive_command="seedvault wal-push %p",
        archive_library="",
        archive_timeout=60,
        seg_size=SEG,
        timeline=1,
        current_lsn=4 * SEG,
        now=NOW,
        archived_count=3,
        last_archived_wal=seg(3),
        last_archived_time=NOW - timedelta(seconds=10),
        stats_reset=NOW - timedelta(days=1),
        ready_count=0,
    )
    return replace(base, **kw)


def judged(f: ArchiverFacts, max_lag: float = 300) -> FreshnessReport:
    report = FreshnessReport(f, max_lag)
    report.archived_segno = archived_through(f, None)
    judge_server(report)
    return report


def kinds(report: FreshnessReport) -> list[str]:
    return [p.kind for p in report.problems]


def test_idle_server_is_not_an_alarm_however_old_its_last_archival() -> None:
    long_ago = NOW - timedelta(hours=5)
    at_boundary = judged(facts(last_archived_time=long_ago))
    assert at_boundary.ok and at_boundary.lag_bytes == 0 and at_boundary.pending == 0
    # A standby snapshot (an "unimportant" record archive_timeout does not switch for) past the boundary.
    snapshot = judged(facts(last_archived_time=long_ago, current_lsn=4 * SEG + 0x60))
    assert snapshot.ok and snapshot.lag_bytes == 0x60
    # A segment completed a moment ago after hours of idleness: waiting 1 s, not 5 h.
    just_switched = judged(
        facts(
            last_archived_time=long_ago,
            current_lsn=5 * SEG,
            ready_count=1,
            oldest_ready=seg(4),
            oldest_ready_time=NOW - timedelta(seconds=1),
        )
    )
    assert just_switched.ok and just_switched.pending == 1


def test_completed_wal_waiting_longer_than_max_lag_is_stale() -> None:
    backlog = judged(
        facts(current_lsn=9 * SEG, ready_count=5, oldest_ready=seg(4), oldest_ready_time=NOW - timedelta(seconds=400))
    )  # the last archival is recent (10 s): the archiver works, but too slowly
    assert kinds(backlog) == ["lag"]
    assert seg(4) in backlog.problems[0].message and "5 WAL file(s)" in backlog.problems[0].message
    with pytest.raises(WalStale, match=f"the oldest \\({seg(4)}\\) for 400 s"):
        backlog.raise_for_problems()


def test_without_pg_monitor_completed_segments_and_an_old_archival_are_stale() -> None:
    old = NOW - timedelta(seconds=400)
    stale = judged(facts(ready_count=None, current_lsn=6 * SEG + 100, last_archived_time=old))
    assert kinds(stale) == ["lag"] and stale.pending == 2 and f"from {seg(4)}" in stale.problems[0].message
    assert any("grant pg_monitor" in n for n in stale.notes)
    assert judged(facts(ready_count=None, current_lsn=6 * SEG + 100)).ok  # archived 10 s ago: in progress
    assert judged(facts(ready_count=None, current_lsn=4 * SEG + 100, last_archived_time=old)).ok  # idle


def test_archive_timeout_off_makes_an_unswitched_segment_stale() -> None:
    old = NOW - timedelta(seconds=400)
    report = judged(facts(archive_timeout=0, current_lsn=4 * SEG + 5000, last_archived_time=old))
    assert kinds(report) == ["lag"] and "archive_timeout = 0" in report.problems[0].message
    assert "archive_timeout = 60s" in (report.problems[0].hint or "")
    assert judged(facts(archive_timeout=0, current_lsn=4 * SEG, last_archived_time=old)).ok  # nothing beyond
    noted = judged(facts(archive_timeout=600))
    assert noted.ok and any("archive_timeout = 600 s exceeds max-lag" in n for n in noted.notes)


def test_failing_archiver_is_stale_at_once_and_recovered_one_is_not() -> None:
    failing = judged(
        facts(
            failed_count=4,
            last_failed_wal=seg(4),
            last_failed_time=NOW - timedelta(seconds=2),
            ready_count=1,
            oldest_ready=seg(4),
            oldest_ready_time=NOW - timedelta(seconds=5),
            current_lsn=5 * SEG,
        )
    )
    assert kinds(failing) == ["failing"]
    with pytest.raises(WalStale) as info:
        failing.raise_for_problems()
    assert f"{seg(4)} failed at 2026-12-01T11:59:58Z (4 failures" in str(info.value)
    assert info.value.exit_code == 61 and info.value.hint
    recovered = judged(facts(failed_count=4, last_failed_wal=seg(3), last_failed_time=NOW - timedelta(seconds=30)))
    assert recovered.ok


def test_settings_that_archive_nothing_or_not_to_seedvault() -> None:
    assert kinds(judged(facts(archive_mode="off"))) == ["not-archiving"]
    standby = judged(facts(in_recovery=True, archive_mode="on"))
    assert kinds(standby) == ["not-archiving"] and "on a standby" in standby.problems[0].message
    assert judged(facts(in_recovery=True, archive_mode="always")).ok
    assert kinds(judged(facts(archive_command="cp %p /mnt/wal/%f"))) == ["not-archiving"]
    assert kinds(judged(facts(archive_library="basic_archive"))) == ["not-archiving"]
    hidden = judged(facts(archive_command=None))
    assert hidden.ok and any("pg_read_all_settings" in n for n in hidden.notes)


def test_several_problems_raise_the_first_and_count_the_rest() -> None:
    report = judged(
        facts(
            archive_command="false",
            failed_count=1,
            last_failed_wal=seg(4),
            last_failed_time=NOW,
            ready_count=1,
            oldest_ready=seg(4),
            oldest_ready_time=NOW - timedelta(seconds=900),
            current_lsn=5 * SEG,
        )
    )
    assert kinds(report) == ["failing", "lag", "not-archiving"]
    with pytest.raises(WalStale, match=r"\(and 2 more: lag, not-archiving\)$"):
        report.raise_for_problems()
    assert report.as_dict()["problems"][1]["exit_code"] == 61


# --- the repository side -----------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> WalStore:
    key = tmp_path / "master.key"
    key.write_text(generate_raw_key())
    key.chmod(0o600)
    repo = Repository(LocalStorage(str(tmp_path / "repo"), create=True), KeySource("raw", origin="test", path=key))
    repo.config(create=True)
    return WalStore(repo, SYSID)


def push(store: WalStore, tmp_path: Path, *segnos: int) -> None:
    for s in segnos:
        head = wn.LONG_HEADER.pack(wn.PAGE_MAGIC[15], wn.XLP_LONG_HEADER, 1, s * SEG, 0, SYSID, SEG, 8192)
        path = tmp_path / seg(s)
        path.write_bytes(head + os.urandom(512) + b"\0" * (SEG - len(head) - 512))
        store.push(path)


def base_backup(repo: Repository, start_segno: int) -> str:
    with repo.begin(kind="postgres-physical", labels={"name": "t"}) as b:
        b.write_object("base.tar", io.BytesIO(b"x"))
        b.source = {
            "type": "postgres-physical",
            "system_id": str(SYSID),
            "timeline": 1,
            "start_lsn": wn.format_lsn(start_segno * SEG + 40),
            "stop_lsn": wn.format_lsn(start_segno * SEG + 400),
            "stop_time": "2026-12-01T10:00:00Z",
            "wal_segment_size": SEG,
            "pg_major": 15,
        }
    return b.backup_id


def judged_repo(store: WalStore, f: ArchiverFacts) -> FreshnessReport:
    report = FreshnessReport(f, 300)
    report.archived_segno = archived_through(f, store)
    judge_repository(report, store.repo, store)
    return report


def test_backup_history_as_last_archived_file_falls_back_to_the_catalog(store: WalStore, tmp_path: Path) -> None:
    push(store, tmp_path, 2, 3, 4)
    f = facts(last_archived_wal=f"{seg(2)}.00000028.backup", current_lsn=5 * SEG + 10)
    assert archived_through(f, store) == 4
    assert archived_through(facts(last_archived_wal=None, current_lsn=3 * SEG + 10), store) == 3  # not beyond here


def test_contiguous_wal_since_the_base_backup_passes(store: WalStore, tmp_path: Path) -> None:
    push(store, tmp_path, 2, 3, 4)
    bid = base_backup(store.repo, 2)
    report = judged_repo(store, facts(last_archived_wal=seg(4), current_lsn=5 * SEG))
    assert report.ok and report.base_backup == bid and report.segments_checked == 3
    assert (report.first_segment, report.last_segment) == (seg(2), seg(4))


def test_no_base_backup_is_a_note_not_an_alarm(store: WalStore, tmp_path: Path) -> None:
    push(store, tmp_path, 2, 3)
    report = judged_repo(store, facts(last_archived_wal=seg(3)))
    assert report.ok and report.base_backup is None and any("no physical base backup" in n for n in report.notes)


def test_missing_last_archived_and_holes_are_wal_gaps_naming_the_segment(store: WalStore, tmp_path: Path) -> None:
    push(store, tmp_path, 2, 3, 4, 5)
    base_backup(store.repo, 2)
    # The newest file the server archived is not in the store (deleted, or archived elsewhere).
    missing = judged_repo(store, facts(last_archived_wal=seg(6), current_lsn=7 * SEG))
    assert kinds(missing) == ["missing"] and seg(6) in missing.problems[0].message
    # A hole with later WAL stored: the planner's walk names it.
    store.repo.storage.delete([store.object_key(wn.classify(seg(3)))])
    hole = judged_repo(store, facts(last_archived_wal=seg(5), current_lsn=6 * SEG))
    assert kinds(hole) == ["gap"] and seg(3) in hole.problems[0].message
    with pytest.raises(WalGap) as info:
        hole.raise_for_problems()
    assert info.value.exit_code == 25 and "seedvault backup postgres-base" in info.value.one_line()
    # The tail (4, 5) gone as well: the last one is reported missing, the one before it as the gap.
    store.repo.storage.delete([store.object_key(wn.classify(seg(s))) for s in (4, 5)])
    push(store, tmp_path, 3)
    tail = judged_repo(store, facts(last_archived_wal=seg(5), current_lsn=6 * SEG))
    assert kinds(tail) == ["missing", "gap"] and seg(4) in tail.problems[1].message
