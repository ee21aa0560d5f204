"""What a PostgreSQL server says about its WAL archiving: settings, WAL position, ``pg_stat_archiver``, ``.ready``.

Read for ``seedvault check wal-freshness`` (:mod:`seedvault.ops.wal_freshness`), which judges it. Every value
comes from the server itself, the time included (``now()``): the archiver's timestamps and the ``.ready``
files' modification times are on the server's clock, so no clock skew with the checking host can fake an age.
``pg_ls_archive_statusdir()`` needs ``pg_monitor`` (or superuser) and ``archive_command`` needs
``pg_read_all_settings``; without them those facts are ``None`` and the judge says what it could not see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from seedvault.errors import SourceError
from seedvault.sources.postgres.connection import PgTarget
from seedvault.sources.postgres.wal import names as wn


@dataclass
class ArchiverFacts:
    """What the server says about its WAL and its archiver, read in one go."""

    where: str
    system_id: str
    in_recovery: bool
    archive_mode: str
    archive_command: str | None  # None: not visible to this role (needs pg_read_all_settings)
    archive_library: str | None
    archive_timeout: int  # seconds; 0 = off
    seg_size: int
    timeline: int
    current_lsn: int
    now: datetime
    archived_count: int = 0
    last_archived_wal: str | None = None
    last_archived_time: datetime | None = None
    failed_count: int = 0
    last_failed_wal: str | None = None
    last_failed_time: datetime | None = None
    stats_reset: datetime | None = None
    ready_count: int | None = None  # None: pg_ls_archive_statusdir() not allowed for this role
    oldest_ready: str | None = None
    oldest_ready_time: datetime | None = None


_SETTINGS_SQL = """
SELECT (SELECT system_identifier FROM pg_control_system())::text,
       pg_is_in_recovery(), current_setting('archive_mode'),
       (SELECT setting FROM pg_settings WHERE name = 'archive_command'),
       (SELECT setting FROM pg_settings WHERE name = 'archive_library'),
       (SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout'),
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
       now()
"""
_ARCHIVER_SQL = """
SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time,
       stats_reset FROM pg_stat_archiver
"""
_READY_SQL = """
SELECT count(*) OVER (), name, modification FROM pg_ls_archive_statusdir()
 WHERE name LIKE '%.ready' ORDER BY modification, name LIMIT 1
"""


def read_archiver(target: PgTarget) -> ArchiverFacts:
    """Settings, WAL position, archiver statistics and (if this role may) the ``.ready`` files."""
    where = target.display()
    with target.connect() as conn:
        try:
            row = conn.execute(_SETTINGS_SQL).fetchone()
            assert row is not None
            sysid, in_recovery, mode, command, library, timeout, seg_size, now = row
            if in_recovery:
                pos = conn.execute(
                    "SELECT coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text,"
                    " (SELECT timeline_id FROM pg_control_checkpoint())"
                ).fetchone()
                lsn_text, tli = pos if pos else (None, None)
            else:
                lsn_text, name = conn.execute(  # type: ignore[misc]
                    "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())"
                ).fetchone()
                tli = int(name[:8], 16)
            archiver = conn.execute(_ARCHIVER_SQL).fetchone()
        except psycopg.Error as exc:
            raise SourceError(f"cannot inspect WAL archiving on {where}: {str(exc).splitlines()[0]}") from None
        try:
            ready = conn.execute(_READY_SQL).fetchone()
            ready_facts: tuple[Any, ...] = ready if ready else (0, None, None)
        except psycopg.errors.InsufficientPrivilege:
            ready_facts = (None, None, None)
    if lsn_text is None:
        raise SourceError(f"{where} is in recovery and reports no WAL position (neither received nor replayed)")
    assert archiver is not None
    return ArchiverFacts(
        where=where,
        system_id=str(sysid),
        in_recovery=bool(in_recovery),
        archive_mode=mode,
        archive_command=command,
        archive_library=library,
        archive_timeout=int(timeout or 0),
        seg_size=int(seg_size),
        timeline=int(tli),
        current_lsn=wn.parse_lsn(lsn_text),
        now=now,
        archived_count=int(archiver[0] or 0),
        last_archived_wal=archiver[1],
        last_archived_time=archiver[2],
        failed_count=int(archiver[3] or 0),
        last_failed_wal=archiver[4],
        last_failed_time=archiver[5],
        stats_reset=archiver[6],
        ready_count=ready_facts[0],
        oldest_ready=ready_facts[1].removesuffix(".ready") if ready_facts[1] else None,
        oldest_ready_time=ready_facts[2],
    )
