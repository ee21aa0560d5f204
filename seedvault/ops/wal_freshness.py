"""``check wal-freshness``: does this server's WAL reach the repository, on time and without holes?

Why a check of its own: PostgreSQL keeps a WAL file whose ``archive_command`` fails and retries it for
ever, quietly; only ``pg_stat_archiver`` and the server log show it, while ``pg_wal`` fills up and the
recovery point stops moving. And a point-in-time recovery needs every segment from the last base backup
on, which nobody finds out is untrue before the restore. So, every few minutes, three views are compared:

* the archiver's statistics: failing since when, on which file; the last archived file and when;
* the server's WAL position and what waits in ``pg_wal/archive_status`` (``.ready``: WAL that is
  complete but not archived, stamped when it was completed; needs ``pg_monitor``, else an estimate);
* the repository's WAL catalog: the last file the server says it archived is there, and the segments from
  the newest base backup's start are contiguous (the restore planner's own walk,
  ``seedvault.sources.postgres.wal.plan``).

Verdicts, in the order they are raised (every one found is in the report):

* ``failing`` (:class:`WalStale`): the last failure is newer than the last success.
* ``lag`` (:class:`WalStale`): completed WAL has waited longer than ``max_lag`` (the oldest ``.ready``
  file; without ``pg_monitor``: completed segments are unarchived and the last archival is older than
  ``max_lag``). With ``archive_timeout = 0`` also a partly filled segment holding WAL beyond the last
  archived one when that is older than ``max_lag``: nothing would ever switch it.
* ``not-archiving`` (:class:`WalStale`): ``archive_mode`` off (or ``on`` on a standby), or an
  ``archive_command`` that does not run ``seedvault wal-push``.
* ``missing`` and ``gap`` (:class:`WalGap`): the last archived file is absent from the repository, or a
  segment between the newest base backup's start and it is.

An idle server is not an alarm, however old its last archival: nothing is waiting. Its position may even
be a few bytes into the next segment (PostgreSQL's standby snapshots are "unimportant" records, which
``archive_timeout`` deliberately does not switch for), so with ``archive_timeout`` set only completed
WAL counts as lag; PostgreSQL itself completes a segment holding real changes within ``archive_timeout``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from seedvault.errors import BackupNotFound, SeedvaultError, UsageError, WalGap, WalStale
from seedvault.repository import Repository
from seedvault.sources.postgres.archiver import ArchiverFacts, read_archiver
from seedvault.sources.postgres.connection import PgTarget
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.plan import Target, make_plan
from seedvault.sources.postgres.wal.store import WalStore

DEFAULT_MAX_LAG = 300.0
FAILING_HINT = "see the server log for 'archive command failed'; seedvault wal-push names the cause on its stderr"
LAG_HINT = "check archive_command, the repository's reachability and pg_stat_archiver on the server"
GAP_HINT = (
    "the WAL was lost after it was archived (deleted, expired by a lifecycle rule, or archived into another "
    "repository); fix that, then take a new base backup (seedvault backup postgres-base) so recovery does not "
    "need the lost WAL"
)


@dataclass(frozen=True)
class Problem:
    kind: str  # failing | lag | not-archiving | missing | gap
    error: type[SeedvaultError]
    message: str
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "exit_code": self.error.exit_code, "message": self.message, "hint": self.hint}


@dataclass
class FreshnessReport:
    """The verdict and the numbers behind it (``as_dict`` is the ``--json`` output and the artifact)."""

    facts: ArchiverFacts
    max_lag: float
    archived_segno: int | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    base_backup: str | None = None
    segments_checked: int = 0
    first_segment: str | None = None
    last_segment: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def age_seconds(self) -> float | None:
        """Seconds since the last successful archival (server clock)."""
        t = self.facts.last_archived_time
        return None if t is None else round((self.facts.now - t).total_seconds(), 1)

    @property
    def lag_bytes(self) -> int | None:
        """WAL written beyond the end of the last archived segment of the current timeline."""
        if self.archived_segno is None:
            return None
        return max(0, self.facts.current_lsn - (self.archived_segno + 1) * self.facts.seg_size)

    @property
    def pending(self) -> int | None:
        """WAL files waiting to be archived (``.ready``), else completed segments beyond the last archived."""
        f = self.facts
        if f.ready_count is not None:
            return f.ready_count
        if self.archived_segno is None:
            return None
        return max(0, wn.segno_of_lsn(f.current_lsn, f.seg_size) - self.archived_segno - 1)

    @property
    def oldest_pending_age(self) -> float | None:
        t = self.facts.oldest_ready_time
        return None if t is None else round((self.facts.now - t).total_seconds(), 1)

    def as_dict(self) -> dict[str, Any]:
        f = self.facts
        return {
            "ok": self.ok,
            "server": f.where,
            "system_id": f.system_id,
            "timeline": f.timeline,
            "current_lsn": wn.format_lsn(f.current_lsn),
            "current_segment": wn.segment_name(f.timeline, wn.segno_of_lsn(f.current_lsn, f.seg_size), f.seg_size),
            "last_archived_wal": f.last_archived_wal,
            "last_archived_time": _stamp(f.last_archived_time),
            "age_seconds": self.age_seconds,
            "lag_bytes": self.lag_bytes,
            "pending": self.pending,
            "oldest_pending": f.oldest_ready,
            "oldest_pending_age_seconds": self.oldest_pending_age,
            "failed_count": f.failed_count,
            "last_failed_wal": f.last_failed_wal,
            "last_failed_time": _stamp(f.last_failed_time),
            "archive_mode": f.archive_mode,
            "archive_timeout": f.archive_timeout,
            "max_lag": self.max_lag,
            "base_backup": self.base_backup,
            "segments_checked": self.segments_checked,
            "first_segment": self.first_segment,
            "last_segment": self.last_segment,
            "problems": [p.as_dict() for p in self.problems],
            "notes": self.notes,
        }

    def summary(self) -> str:
        """One line for a passing check."""
        f = self.facts
        age = "" if self.age_seconds is None else f" {self.age_seconds:.0f} s ago"
        lag = "an unknown number of" if self.lag_bytes is None else str(self.lag_bytes)
        pending = "?" if self.pending is None else str(self.pending)
        line = (
            f"WAL archiving of system {f.system_id} (timeline {f.timeline}) is fresh: last archived "
            f"{f.last_archived_wal or 'nothing'}{age}, {lag} bytes behind {wn.format_lsn(f.current_lsn)}, "
            f"{pending} pending"
        )
        if self.base_backup:
            line += f"; {self.segments_checked} segments contiguous since base backup {self.base_backup}"
        return line

    def raise_for_problems(self) -> None:
        """Raise the first problem's error (``WalStale`` or ``WalGap``), counting the others."""
        if not self.problems:
            return
        first, rest = self.problems[0], self.problems[1:]
        message = first.message
        if rest:
            message += f" (and {len(rest)} more: {', '.join(p.kind for p in rest)})"
        raise first.error(message, hint=first.hint)


def _stamp(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- judging the server's side -----------------------------------------------------------------------
def _classify(name: str | None) -> wn.WalName | None:
    if not name:
        return None
    try:
        return wn.classify(name)
    except UsageError:
        return None


def archived_through(facts: ArchiverFacts, store: WalStore | None) -> int | None:
    """Segment number of the last archived segment of the server's timeline, if known.

    ``last_archived_wal`` says it directly when it is a segment of this timeline. After a base backup it can
    be a ``.backup`` file (named after the backup's *start*), after a promotion a ``.history`` or an old
    timeline's ``.partial``, after a statistics reset nothing: then the repository's catalog answers.
    """
    last = _classify(facts.last_archived_wal)
    if last is not None and last.kind == "segment" and last.timeline == facts.timeline:
        return last.segno(facts.seg_size)
    if store is None:
        return None
    here = wn.segno_of_lsn(facts.current_lsn, facts.seg_size)
    segnos = [
        wn.segno_of(o.name, facts.seg_size)
        for o in store.list(facts.timeline)
        if o.kind == "segment" and o.timeline == facts.timeline
    ]
    segnos = [s for s in segnos if s <= here]
    return max(segnos) if segnos else None


def judge_server(report: FreshnessReport) -> None:
    """The server-side verdicts (failing, lag, not-archiving), appended to ``report.problems``/``notes``."""
    f, max_lag = report.facts, report.max_lag
    age = report.age_seconds
    last = f.last_archived_wal or "nothing"
    since = "" if age is None else f", {age:.0f} s ago"
    if (
        f.failed_count
        and f.last_failed_time
        and (f.last_archived_time is None or f.last_failed_time > f.last_archived_time)
    ):
        report.problems.append(
            Problem(
                "failing",
                WalStale,
                f"WAL archiving is failing on {f.where}: {f.last_failed_wal} failed at {_stamp(f.last_failed_time)} "
                f"({f.failed_count} failures since {_stamp(f.stats_reset) or 'the statistics reset'}); "
                f"last archived: {last}{since}",
                FAILING_HINT,
            )
        )
    pending_age = report.oldest_pending_age
    if f.ready_count is not None:
        if f.ready_count and pending_age is not None and pending_age > max_lag:
            report.problems.append(
                Problem(
                    "lag",
                    WalStale,
                    f"WAL archiving lags on {f.where}: {f.ready_count} WAL file(s) wait to be archived, the "
                    f"oldest ({f.oldest_ready}) for {pending_age:.0f} s (max-lag {max_lag:.0f} s); "
                    f"last archived: {last}{since}",
                    LAG_HINT,
                )
            )
    elif report.archived_segno is None:
        report.notes.append(
            f"cannot tell the archiving lag: nothing of timeline {f.timeline} is known to be archived and this role "
            "may not read pg_wal/archive_status (grant pg_monitor)"
        )
    else:
        pending = report.pending or 0
        stale = age is None or age > max_lag
        if pending and stale:
            first = wn.segment_name(f.timeline, report.archived_segno + 1, f.seg_size)
            report.problems.append(
                Problem(
                    "lag",
                    WalStale,
                    f"WAL archiving lags on {f.where}: {pending} completed segment(s) from {first} are not archived "
                    f"and the last archival ({last}) is older than max-lag {max_lag:.0f} s{since}",
                    LAG_HINT,
                )
            )
        report.notes.append("this role may not read pg_wal/archive_status; the lag is estimated (grant pg_monitor)")
    lag = report.lag_bytes
    if lag and not report.pending and f.archive_timeout == 0 and (age is None or age > max_lag):
        report.problems.append(
            Problem(
                "lag",
                WalStale,
                f"WAL archiving lags on {f.where}: {lag} bytes of WAL beyond the last archived segment ({last}{since}) "
                "wait for a segment switch, and archive_timeout = 0 never forces one",
                "set archive_timeout = 60s so that PostgreSQL archives a partly filled segment",
            )
        )
    elif f.archive_timeout > max_lag:
        report.notes.append(
            f"archive_timeout = {f.archive_timeout} s exceeds max-lag {max_lag:.0f} s: WAL of a quiet server may "
            "stay unarchived that long"
        )
    _judge_settings(report)


def _judge_settings(report: FreshnessReport) -> None:
    f = report.facts
    if f.archive_mode == "off" or (f.in_recovery and f.archive_mode != "always"):
        report.problems.append(
            Problem(
                "not-archiving",
                WalStale,
                f"{f.where} does not archive its WAL (archive_mode = {f.archive_mode}"
                f"{' on a standby' if f.in_recovery else ''})",
                "set archive_mode = on (always on a standby) and archive_command = 'seedvault wal-push %p', "
                "then restart",
            )
        )
    elif f.archive_library or (f.archive_command is not None and "wal-push" not in f.archive_command):
        report.problems.append(
            Problem(
                "not-archiving",
                WalStale,
                f"{f.where} does not archive its WAL to seedvault "
                f"({'archive_library is set' if f.archive_library else 'archive_command does not run wal-push'})",
                "set archive_command = 'seedvault wal-push %p' (RUNBOOK.md)",
            )
        )
    elif f.archive_command is None:
        report.notes.append("this role may not read archive_command (grant pg_read_all_settings)")


# --- judging the repository's side -------------------------------------------------------------------
def _is_stored(store: WalStore, wal: wn.WalName) -> bool:
    storage = store.repo.storage
    if wal.kind == "partial":
        assert wal.segment is not None
        prefix = store.object_key(wn.classify(wal.segment)) + ".partial."
        return any(True for _ in storage.list(prefix))
    return storage.exists(store.object_key(wal))


def judge_repository(report: FreshnessReport, repo: Repository, store: WalStore) -> None:
    """``missing`` and ``gap``: the last archived file is stored, and the WAL since the base backup is whole."""
    f = report.facts
    url = repo.storage.url
    last = _classify(f.last_archived_wal)
    missing = False
    if last is not None and not _is_stored(store, last):
        missing = True
        report.problems.append(
            Problem(
                "missing",
                WalGap,
                f"WAL file {last.name}, archived at {_stamp(f.last_archived_time)} according to pg_stat_archiver on "
                f"{f.where}, is missing from {url}",
                "check that archive_command archives into this repository; if the object was deleted, take a "
                "new base backup (seedvault backup postgres-base) so recovery does not need it",
            )
        )
    try:
        plan = make_plan(repo, Target("latest"), system_id=f.system_id, timeline=f.timeline)
    except BackupNotFound:
        report.notes.append(
            f"no physical base backup of system {f.system_id} in {url}: WAL continuity not checked "
            "(seedvault backup postgres-base)"
        )
        return
    except WalGap as exc:
        report.problems.append(Problem("gap", WalGap, exc.message, GAP_HINT))
        return
    report.base_backup = plan.backup_id
    report.segments_checked = len(plan.segments)
    report.first_segment = plan.segments[0] if plan.segments else None
    report.last_segment = plan.segments[-1] if plan.segments else None
    if last is None or last.kind != "segment" or not plan.segments:
        return
    end, claimed = wn.segno_of(plan.segments[-1], f.seg_size), last.segno(f.seg_size)
    if end < claimed and not (missing and end + 1 == claimed):
        s = end + 1
        name = wn.segment_name(wn.timeline_of_segment(plan.ancestry, s, f.seg_size), s, f.seg_size)
        report.problems.append(
            Problem(
                "gap",
                WalGap,
                f"WAL segment {name} is missing from {url}: the WAL since base backup {plan.backup_id} ends at "
                f"{plan.segments[-1]}, but the server archived up to {last.name}",
                GAP_HINT,
            )
        )


def check_wal_freshness(repo: Repository, target: PgTarget, *, max_lag: float = DEFAULT_MAX_LAG) -> FreshnessReport:
    """Judge the server's WAL archiving into ``repo``; returns the report (``raise_for_problems`` to fail).

    Raises only for what prevents judging: the server or the repository unreachable, a wrong key.
    """
    if not max_lag > 0:
        raise UsageError("--max-lag must be a positive number of seconds")
    facts = read_archiver(target)
    store = WalStore(repo, facts.system_id)
    report = FreshnessReport(facts, float(max_lag))
    report.archived_segno = archived_through(facts, store)
    judge_server(report)
    judge_repository(report, repo, store)
    return report
