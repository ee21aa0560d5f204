"""``cleanup``: remove what interrupted writers left behind, never a complete backup.

Candidates are (a) objects of a backup id that has no manifest (data and key objects of a backup that
died before its commit marker), and (b) temporary files / unfinished multipart uploads. A candidate is
removed only when its newest trace is older than the grace period (default 24 h): a backup still
running keeps writing objects or parts, so its newest trace stays young and it is left alone. The
traces of one backup id are judged together, by the newest of them (object times, temp file times, the
newest uploaded part of a multipart upload), never by the oldest (its key object, written first).

A backup still being written is never touched, whatever the grace: every writer holds a lease
(:mod:`seedvault.leases`) stored before its first object, and cleanup lists the objects *before* the leases,
so every object it saw belongs to a lease it also sees, or to a writer that died (its lease stops being
refreshed and turns stale after ``lease_stale``, or at once when its process is gone from this host: reported,
ignored, and removed with the other leftovers). A backup whose objects a cleanup
removed anyway (a writer of an older seedvault, without leases) does not commit: its writer checks its
objects before the manifest (ObjectVanished, exit 17). The
complete backups (manifest present) are never touched, even if their manifest fails to authenticate;
that is for ``verify`` to report and for an operator to decide.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from seedvault import audit, leases
from seedvault.format import layout
from seedvault.repository import Repository


@dataclass
class CleanupReport:
    incomplete_backups: list[str] = field(default_factory=list)
    objects_removed: list[str] = field(default_factory=list)
    partial_writes_aborted: list[str] = field(default_factory=list)
    kept_young: list[str] = field(default_factory=list)
    kept_leased: list[str] = field(default_factory=list)  # "<backup id>: <who holds it>"
    stale_leases: list[str] = field(default_factory=list)  # "<lease id>: <who held it>"
    unreadable_leases: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()

    def counts(self) -> dict[str, int]:
        """What the audit event records (counts only)."""
        return {name: len(value) for name, value in self.__dict__.items()}


def cleanup(
    repo: Repository,
    *,
    grace_seconds: float,
    dry_run: bool = False,
    lease_stale: timedelta = leases.DEFAULT_STALE,
    now: datetime | None = None,
) -> CleanupReport:
    report = CleanupReport()
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=grace_seconds)
    storage = repo.storage
    complete = set(repo.backup_ids())
    by_backup: dict[str, list] = defaultdict(list)
    for root in (layout.BACKUPS, layout.KEYS):
        for info in storage.list(root):
            bid = layout.backup_id_of(info.key)
            if bid and bid not in complete:
                by_backup[bid].append(info)
    partials = list(storage.list_partial(layout.ROOT + "/"))
    # After the objects, never before: a writer stores its lease before its first object (seedvault.leases).
    held = leases.read_leases(repo, stale_after=lease_stale, now=now)
    report.stale_leases = [f"{lease.lease_id}: {lease.describe()}" for lease in held.stale]
    report.unreadable_leases = held.unreadable
    leased = held.held_ids()
    # A multipart upload started long ago may still be receiving parts: judge it by its newest part (one
    # request each, only for those older than the grace), not by its start.
    activity = {p: (p.started if p.started > cutoff else storage.partial_activity(p)) for p in partials}
    newest_partial: dict[str, datetime] = {}
    for p in partials:
        bid = layout.backup_id_of(p.key)
        if bid:
            newest_partial[bid] = max(newest_partial.get(bid, activity[p]), activity[p])
    for bid, infos in sorted(by_backup.items()):
        if bid in leased:
            report.kept_leased.append(f"{bid}: {leased[bid].describe()}")
            continue
        newest = max([i.modified for i in infos] + ([newest_partial[bid]] if bid in newest_partial else []))
        if newest > cutoff:
            report.kept_young.append(bid)
            continue
        report.incomplete_backups.append(bid)
        # Data before keys, as in a delete; the manifest does not exist.
        data = [i.key for i in infos if i.key.startswith(layout.BACKUPS)]
        keys = [i.key for i in infos if i.key.startswith(layout.KEYS)]
        if not dry_run:
            storage.delete(data)
            storage.delete(keys)
        report.objects_removed.extend(data + keys)
    for p in partials:
        bid = layout.backup_id_of(p.key)
        # A partial write of a backup whose other traces are young belongs to a running backup: keep it.
        if activity[p] > cutoff or (bid and (bid in report.kept_young or bid in leased)):
            continue
        if not dry_run:
            storage.abort_partial(p)
        report.partial_writes_aborted.append(p.key)
    if not dry_run:  # their holders are gone: the leases are leftovers like any other (reported above)
        leases.remove_stale(repo, held)
        audit.record(repo, "cleanup", details=report.counts())
    return report
