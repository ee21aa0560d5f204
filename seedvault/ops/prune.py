"""``prune``: gather what the repository holds, plan with :mod:`seedvault.retention`, delete safely.

Order, and why:

1. Gather: every complete backup's authenticated manifest body (from the catalog's index), every system's
   WAL listing and parsed timeline histories, the pins and verification results of the audit log. A backup
   whose manifest cannot be read is never deleted by prune (it is reported: ``verify``/``delete`` are the
   tools for it).
2. Plan. Without ``execute`` (the CLI's default; ``--yes`` executes) that is all: the plan is the output.
3. Store an **exclusive lease** naming every backup the plan deletes (the intent), then read the shared
   leases: a backup a running restore, verify or PITR names is kept ("in use by ..."), and the plan is made
   again with those kept (so the WAL they need stays too). A reader that starts later stores its lease and
   then sees the intent (seedvault.leases), so it refuses instead of reading a backup being deleted.
4. Record the intent in the audit log, write the catalog's tombstone for them, delete every planned
   **manifest first** (each backup stops being listed before any of its data goes), then each backup's data
   and key objects, then the WAL files oldest first. A crash at any point leaves nothing listed that is half
   gone; ``cleanup`` removes what a killed prune left (its lease turns stale) and a re-run of prune finishes
   the plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from seedvault import audit, catalog, faults, leases, storagecost
from seedvault import retention as rt
from seedvault.catalog import Catalog
from seedvault.errors import KeyMissing, SeedvaultError
from seedvault.format import layout
from seedvault.ops.platform import members_of
from seedvault.repository import Repository
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.plan import _parse_time
from seedvault.sources.postgres.wal.store import WalStore, system_ids

log = logging.getLogger(__name__)
WAL_BATCH = 500  # keys per delete request (S3 DeleteObjects takes up to 1000)


@dataclass
class MutableState:
    """What changes after a backup is written (from the audit log): pins and verification results."""

    pins: dict[str, str] = field(default_factory=dict)  # backup id -> "reason (by who, until when)"
    verified: set[str] = field(default_factory=set)  # backups whose last verification passed
    problems: list[str] = field(default_factory=list)  # the log could not be trusted: prune refuses


@dataclass
class Inputs:
    backups: list[rt.BackupItem]
    wal: list[rt.WalItem]
    histories: dict[tuple[str, int], list[wn.HistoryEntry]]
    unreadable: list[str]  # "<backup id>: <why>", never deleted
    wal_sizes: dict[str, int]
    bodies: dict[str, dict] = field(default_factory=dict)  # backup id -> its authenticated manifest body


@dataclass
class PruneReport:
    plan: rt.RetentionPlan
    executed: bool = False
    deleted_backups: list[str] = field(default_factory=list)
    deleted_wal: int = 0
    bytes_freed: int = 0
    in_use: list[str] = field(default_factory=list)  # "<backup id>: <lease>" kept because something reads it
    unreadable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "executed": self.executed,
            "backups": [
                {"id": d.name, "keep": d.keep, "reasons": d.reasons, "kind": d.item.kind, "label": d.item.label}  # type: ignore[union-attr]
                for d in self.plan.backups
            ],
            "wal": [
                {"key": d.name, "name": d.item.name, "keep": d.keep, "reasons": d.reasons}  # type: ignore[union-attr]
                for d in self.plan.wal
            ],
            "warnings": self.plan.warnings,
            "deleted_backups": self.deleted_backups,
            "deleted_wal": self.deleted_wal,
            "bytes_freed": self.bytes_freed,
            "in_use": self.in_use,
            "unreadable": self.unreadable,
        }


def audit_state(repo: Repository) -> MutableState:
    """Pins and verification results from the audit log, every event read and checked (prune deletes).

    A repository without an audit log yet (no repository secret): nothing pinned, nothing verified, so
    ``min_verified`` keeps everything. A log that cannot be read or is not intact: ``problems``, and prune
    refuses to delete (a removed unpin or verify failure must not decide).
    """
    try:
        st = audit.state(repo, full=True)
    except KeyMissing:
        return MutableState()
    except SeedvaultError as exc:
        return MutableState(problems=[exc.one_line()])
    pins = {}
    for bid, pin in st.pins.items():
        until = f", until {pin.until:%Y-%m-%d %H:%M}Z" if pin.until else ""
        pins[bid] = f"{pin.reason} (by {pin.by}{until})"
    verified = {bid for bid, outcome in st.last_verified.items() if outcome.ok}
    return MutableState(pins=pins, verified=verified, problems=list(st.problems))


def gather(repo: Repository, state: MutableState) -> Inputs:
    """Everything the planner decides on, read from the repository (authenticated where it matters)."""
    backups: list[rt.BackupItem] = []
    bodies: dict[str, dict] = {}
    unreadable: list[str] = []
    for entry in Catalog(repo, full=True).entries():  # the index, with every key object listed: exact
        body = entry.body
        if body is None:
            unreadable.append(f"{entry.backup_id}: {entry.problem}")
            continue
        backups.append(backup_item(entry.backup_id, body, state))
        bodies[entry.backup_id] = body
    wal: list[rt.WalItem] = []
    histories: dict[tuple[str, int], list[wn.HistoryEntry]] = {}
    sizes: dict[str, int] = {}
    for sid in system_ids(repo):
        store = WalStore(repo, sid)
        for o in store.list():
            wal.append(rt.WalItem(sid, o.key, o.name, o.kind, o.timeline, o.segment, o.modified))
            sizes[o.key] = o.size
        for h in store.list_histories():
            try:
                histories[(sid, h.timeline)] = wn.parse_history(store.read_history(h.timeline), h.timeline)
            except SeedvaultError as exc:  # planned as unknown: that timeline's WAL is kept
                log.warning("timeline history %s of system %s cannot be read: %s", h.name, sid, exc.one_line())
    return Inputs(backups, wal, histories, unreadable, sizes, bodies)


def _wal_until(body: dict) -> tuple[str, int, str] | None:
    """A platform group's restore point as (system id, timeline, LSN): the WAL it needs ends there."""
    point = (
        ((body.get("source") or {}).get("postgres") or {}).get("restore_point")
        if body.get("kind") == "platform"
        else None
    )
    if not point:
        return None
    return str(point["system_id"]), int(point["timeline"]), str(point["lsn"])


def backup_item(backup_id: str, body: dict, state: MutableState) -> rt.BackupItem:
    """What the retention planner knows of one backup: its manifest body, with pins and verification from ``state``."""
    src = body.get("source") or {}
    physical = body.get("kind") == rt.PHYSICAL
    lock = storagecost.manifest_lock(body)
    return rt.BackupItem(
        backup_id=backup_id,
        kind=str(body.get("kind")),
        label=str((body.get("labels") or {}).get("name", "")),
        time=_parse_time(str(body.get("finished") or body.get("started"))),
        parent=body.get("parent"),
        pinned=state.pins.get(backup_id),
        locked_until=lock[1] if lock else None,
        verified=backup_id in state.verified,
        system_id=str(src.get("system_id")) if physical and src.get("system_id") is not None else None,
        source=src if physical else None,
        members=tuple(members_of(body)),
        wal_until=_wal_until(body),
    )


def prune(
    repo: Repository,
    policies: rt.Policies,
    *,
    execute: bool = False,
    now: datetime | None = None,
    state: MutableState | None = None,
    lease_stale: timedelta | None = None,
    lock_conflict: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> PruneReport:
    """Plan, and with ``execute`` delete what the plan deletes (see the module docstring for the order)."""
    now = now or datetime.now(UTC)
    state = state or MutableState()
    if state.problems and execute:
        from seedvault.errors import VerificationFailed

        raise VerificationFailed(
            f"refusing to prune: the audit log cannot be trusted ({state.problems[0]}); nothing was deleted",
            hint="'seedvault audit' names the problem; pins and verification results come from it",
        )
    inputs = gather(repo, state)
    first = rt.plan(inputs.backups, inputs.wal, policies, now, histories=inputs.histories)
    if _wal_locks(repo, inputs, first.deletions()[1], now):  # WAL files still under Object Lock stay
        first = rt.plan(inputs.backups, inputs.wal, policies, now, histories=inputs.histories)
    if _backup_locks(repo, inputs, first.deletions()[0], now):  # a replica's own lock is not in the manifest
        first = rt.plan(inputs.backups, inputs.wal, policies, now, histories=inputs.histories)
    report = PruneReport(first, unreadable=inputs.unreadable)
    if lock_conflict:
        first.warnings.append(lock_conflict)
    doomed, doomed_wal = first.deletions()
    if not execute or (not doomed and not doomed_wal):
        return report
    stale = lease_stale if lease_stale is not None else leases.DEFAULT_STALE
    with leases.HeldLease(repo, "prune", [b.backup_id for b in doomed], exclusive=True) as intent:
        faults.reached("prune-intent-stored")
        held = leases.read_leases(repo, stale_after=stale).held_ids(besides=intent.lease_id)
        if held:
            kept = [
                replace(b, pinned=f"in use by {held[b.backup_id].describe()}") if b.backup_id in held else b
                for b in inputs.backups
            ]
            report.in_use = [f"{b.backup_id}: {held[b.backup_id].describe()}" for b in doomed if b.backup_id in held]
            report.plan = rt.plan(kept, inputs.wal, policies, now, histories=inputs.histories)
            doomed, doomed_wal = report.plan.deletions()
        report.executed = True
        ids = [b.backup_id for b in doomed]
        audit.record(repo, "prune-intent", backup_ids=ids, details={"wal_files": len(doomed_wal)})
        faults.reached("prune-intent-recorded")
        with audit.audited(repo, "prune", ids) as ev:
            _delete(repo, report, doomed, doomed_wal, inputs, progress)
            ev.details.update(deleted_wal=report.deleted_wal, bytes_freed=report.bytes_freed)
    return report


def _backup_locks(repo: Repository, inputs: Inputs, doomed: list[rt.BackupItem], now: datetime) -> bool:
    """Ask the storage for the Object Lock of each backup the plan deletes whose manifest records none.

    Why: a replicated backup carries the lock of the repository it was copied into (seedvault.ops.replicate),
    while its manifest (copied byte for byte) records the source's. One HEAD per doomed backup.
    """
    changed = False
    by_id = {b.backup_id: i for i, b in enumerate(inputs.backups)}
    for b in doomed:
        try:
            retention = repo.storage.retention(layout.manifest_key(b.backup_id))
        except SeedvaultError:
            continue
        if storagecost.locked(retention, now) and (b.locked_until is None or retention[1] > b.locked_until):  # type: ignore[index]
            assert retention is not None
            inputs.backups[by_id[b.backup_id]] = replace(b, locked_until=retention[1])
            changed = True
    return changed


def _wal_locks(repo: Repository, inputs: Inputs, doomed_wal: list[rt.WalItem], now: datetime) -> bool:
    """Ask the storage for the Object Lock of each WAL file the plan deletes (no manifest records it)."""
    if not doomed_wal:
        return False
    changed = False
    by_key = {w.key: i for i, w in enumerate(inputs.wal)}
    for w in doomed_wal:
        try:
            retention = repo.storage.retention(w.key)
        except SeedvaultError:  # gone meanwhile: nothing to keep
            continue
        if storagecost.locked(retention, now):
            assert retention is not None
            inputs.wal[by_key[w.key]] = replace(w, locked_until=retention[1])
            changed = True
    return changed


def _delete(
    repo: Repository,
    report: PruneReport,
    doomed: list[rt.BackupItem],
    doomed_wal: list[rt.WalItem],
    inputs: Inputs,
    progress: Callable[[str], None] | None,
) -> None:
    storage = repo.storage
    sizes: dict[str, int] = {}
    for b in doomed:  # the sizes freed, from one listing each, before anything goes
        sizes[b.backup_id] = sum(o.size for o in storage.list(layout.backup_prefix(b.backup_id)))
    catalog.forget(repo, [b.backup_id for b in doomed])  # tombstones before any manifest goes (FORMAT 7.2)
    faults.reached("prune-forgotten")
    for b in doomed:  # manifests first: no backup is listed once any of its objects may be gone
        storage.delete([layout.manifest_key(b.backup_id)])
        faults.reached("prune-manifest-deleted")
        if progress:
            progress(f"unlisted backup {b.backup_id}")
    for b in doomed:
        repo.delete_leftovers(b.backup_id)
        report.deleted_backups.append(b.backup_id)
        report.bytes_freed += sizes[b.backup_id]
        faults.reached("prune-backup-deleted")
    ordered = sorted(doomed_wal, key=lambda w: (w.system_id, w.timeline, w.segment or "", w.key))  # oldest first
    for i in range(0, len(ordered), WAL_BATCH):
        batch = ordered[i : i + WAL_BATCH]
        storage.delete([w.key for w in batch])
        report.deleted_wal += len(batch)
        report.bytes_freed += sum(inputs.wal_sizes.get(w.key, 0) for w in batch)
        faults.reached("prune-wal-deleted")
        if progress:
            progress(f"deleted {report.deleted_wal} of {len(ordered)} WAL files")
