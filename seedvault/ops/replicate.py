"""``replicate``: a second, verified copy of every backup and WAL file in another repository.

What is copied: every complete backup the destination lacks (its key objects, its data objects, then its
manifest **last**, so a half-copied backup is never listed at the destination), then every WAL file it lacks
(epoch key objects first, then timeline histories, then records oldest first). Byte for byte, so the copies
authenticate with the same master key (FORMAT.md section 13, "Replication"), each verified on arrival
(:mod:`seedvault.ops.replicate_copy`).

What is not: what the destination's **own** retention policy would delete at once. The plan of
:mod:`seedvault.retention` is made over what both repositories hold, with the destination's policy, pins
and verification results: a backup or WAL file it would prune is not copied (else a destination that keeps
less than the source would get back, every hour, what its prune just deleted). Replication never deletes
anything at the destination; the destination's prune does, by its own policy (it may keep longer).

Order and safety:

* The source lease names what is being copied, so the source's prune keeps it until the copy is done; a
  backup a running source prune is already deleting is skipped. The destination lease names the backups
  being written, so the destination's ``cleanup`` leaves their unpublished objects alone.
* A backup's parent and members (a platform group's) are published at the destination before it.
* A ``kill -9`` anywhere leaves at most unpublished objects at the destination (no manifest: not listed;
  ``cleanup`` removes them after its grace) and a lease that turns stale. A rerun checks what it finds and
  copies the rest: it converges.
* A copy that is wrong on arrival is deleted and copied again once; wrong twice, its backup's manifest is
  not published and the backup is reported as failed (the run exits non-zero after copying the others).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from seedvault import audit, catalog, faults, leases, storagecost
from seedvault import retention as rt
from seedvault.errors import (
    BackupNotFound,
    ConfigError,
    IntegrityError,
    LockHeld,
    ObjectNotFound,
    SeedvaultError,
    StorageUnreachable,
)
from seedvault.format import layout
from seedvault.format import manifest as mf
from seedvault.ops import prune as pr
from seedvault.ops.platform import members_of
from seedvault.ops.replicate_copy import Copied, copy_verified, same_bytes, same_digest
from seedvault.repository import Repository
from seedvault.sources.postgres.wal.plan import _parse_time
from seedvault.storage.base import WriteOptions, redact_url

log = logging.getLogger(__name__)

FAULT_KEYS = "replicate-keys-copied"
FAULT_BEFORE_MANIFEST = "replicate-before-manifest"
FAULT_PUBLISHED = "replicate-manifest-published"


@dataclass
class ReplicationReport:
    """What one run did; ``failed`` non-empty: some copy was wrong twice (exit non-zero)."""

    source: str
    destination: str
    copied_backups: list[str] = field(default_factory=list)
    present_backups: int = 0
    not_wanted: list[str] = field(default_factory=list)  # the destination's policy would delete them at once
    skipped: list[str] = field(default_factory=list)  # "<id>: why" (unreadable at the source, being pruned)
    failed: list[str] = field(default_factory=list)  # "<id or key>: why"
    wal_copied: int = 0
    wal_present: int = 0
    wal_not_wanted: int = 0
    wal_held_back: int = 0  # later records of a timeline whose copy failed (kept out: no hole at the replica)
    objects: int = 0
    bytes_copied: int = 0
    server_side: int = 0
    streamed: int = 0
    retried: list[str] = field(default_factory=list)  # keys copied again after a wrong copy
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def count(self, copied: Copied) -> None:
        if copied.retried:
            self.retried.append(copied.key)
        if copied.how == "present":
            return
        self.objects += 1
        self.bytes_copied += copied.size
        if copied.how == "server-side":
            self.server_side += 1
        else:
            self.streamed += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "destination": self.destination,
            "copied_backups": self.copied_backups,
            "present_backups": self.present_backups,
            "not_wanted": self.not_wanted,
            "skipped": self.skipped,
            "failed": self.failed,
            "wal_copied": self.wal_copied,
            "wal_present": self.wal_present,
            "wal_not_wanted": self.wal_not_wanted,
            "wal_held_back": self.wal_held_back,
            "objects": self.objects,
            "bytes_copied": self.bytes_copied,
            "server_side": self.server_side,
            "streamed": self.streamed,
            "retried": self.retried,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Wanted:
    """What the destination should hold: the plan over both repositories with the destination's policy."""

    src: pr.Inputs
    dst: pr.Inputs
    backups: dict[str, dict]  # id -> authenticated body (source), those the destination's policy keeps
    not_wanted: list[str]
    wal: set[str]  # storage keys of the source's WAL the destination's policy keeps
    warnings: list[str]


def open_destination(src: Repository, dst: Repository) -> None:
    """Create (or check) the destination's config: same format, the source's key-derivation parameters.

    Why the KDF: a passphrase derives the master key with the repository's scrypt parameters; a replica with
    other parameters would derive another key, and the copies would not open there.
    """
    config = src.config()
    dst.config(create=True, kdf=config.get("kdf"))
    if dst.config()["id"] == config["id"]:
        raise ConfigError(f"{redact_url(dst.storage.url)} is the source repository itself; replicate to another one")
    if src.master.kind == "passphrase" and dst.config().get("kdf") != config.get("kdf"):
        raise ConfigError(
            f"the repository at {redact_url(dst.storage.url)} derives keys with other scrypt parameters than the "
            "source: the source's passphrase-keyed backups would not open there",
            hint="replicate to a new (empty) repository, which takes the source's parameters",
        )


def plan(src: Repository, dst: Repository | None, policies: rt.Policies, now: datetime) -> Wanted:
    """Gather both repositories and plan the destination (see the module docstring); ``dst`` None: it is empty."""
    state = pr.audit_state(dst) if dst is not None else pr.MutableState()
    warnings = [f"destination audit log: {p}" for p in state.problems]
    src_in = pr.gather(src, pr.MutableState())
    dst_in = pr.gather(dst, state) if dst is not None else pr.Inputs([], [], {}, [], {})
    bodies = {b.backup_id: b for b in dst_in.backups}
    src_bodies = src_in.bodies  # read once, by gather (the catalog, every key object listed)
    for bid, body in src_bodies.items():
        bodies.setdefault(bid, pr.backup_item(bid, body, state))  # with the destination's pins and verifications
    wal = {w.key: w for w in dst_in.wal}
    for w in src_in.wal:
        wal.setdefault(w.key, w)
    histories = {**dst_in.histories, **src_in.histories}
    if state.problems:  # the destination's pins cannot be trusted: keep everything (copy, never lose)
        return Wanted(src_in, dst_in, src_bodies, [], {w.key for w in src_in.wal}, warnings)
    result = rt.plan(list(bodies.values()), list(wal.values()), policies, now, histories=histories)
    keep = {d.item.backup_id for d in result.backups if d.keep}  # type: ignore[union-attr]
    keep_wal = {d.item.key for d in result.wal if d.keep}  # type: ignore[union-attr]
    wanted = {bid: body for bid, body in src_bodies.items() if bid in keep}
    not_wanted = sorted(bid for bid in src_bodies if bid not in keep)
    return Wanted(src_in, dst_in, wanted, not_wanted, {w.key for w in src_in.wal} & keep_wal, warnings)


def replicate(
    src: Repository,
    dst: Repository,
    policies: rt.Policies,
    *,
    now: datetime | None = None,
    include_wal: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ReplicationReport:
    """Copy what the destination lacks and its policy keeps; verified, manifests last (module docstring)."""
    from time import monotonic

    started = monotonic()
    now = now or datetime.now(UTC)
    report = ReplicationReport(redact_url(src.storage.url), redact_url(dst.storage.url))
    open_destination(src, dst)
    wanted = plan(src, dst, policies, now)
    for line in wanted.warnings:
        log.warning("seedvault: warning: %s", line)
    report.not_wanted = wanted.not_wanted
    present = set(dst.backup_ids())
    todo = [bid for bid in sorted(wanted.backups, reverse=True) if bid not in present]  # newest first
    report.present_backups = len(set(wanted.backups) & present)
    try:
        _copy_all(src, dst, wanted, todo, present, report, now, include_wal, progress)
    except BaseException as exc:
        with contextlib.suppress(Exception):  # never hide the run's own error behind the record of it
            failed = {"to_url": report.destination, "error": audit.error_line(exc), "wal": include_wal}
            audit.record(src, "replicate", result="failed", failed_with=exc, details=failed)
        raise
    report.seconds = monotonic() - started
    details = {**_audit_details(src, report), "to": dst.config()["id"], "to_url": report.destination,
               "started": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "wal": include_wal}  # fmt: skip
    audit.record(src, "replicate", backup_ids=report.copied_backups, result="ok" if report.ok else "failed",
                 details=details)  # fmt: skip
    return report


def _copy_all(
    src: Repository,
    dst: Repository,
    wanted: Wanted,
    todo: list[str],
    present: set[str],
    report: ReplicationReport,
    now: datetime,
    include_wal: bool,
    progress: Callable[[str], None] | None,
) -> None:
    """Under a lease at each end and the destination's audit event: the backups, then the WAL."""
    from seedvault.ops import replicate_wal

    with (
        _source_lease(src, todo) as src_lease,
        leases.HeldLease(dst, "replicate", _leased(todo, wanted.backups)) as _dst_lease,
        audit.audited(dst, "replicate") as ev,
    ):
        _no_prune_running(dst, _dst_lease)
        busy = _being_pruned(src, src_lease, todo)
        report.skipped += [f"{bid}: being deleted by a prune at the source" for bid in sorted(busy)]
        copier = _BackupCopier(src, dst, wanted.backups, present, report, now, busy, progress)
        for bid in copy_order(todo, wanted.backups):
            copier.copy(bid)
        if include_wal:
            replicate_wal.replicate_wal(src, dst, wanted, report, progress)
        ev.backup_ids = list(report.copied_backups)
        ev.details.update(_audit_details(src, report))
        if not report.ok:
            ev.result = "failed"


def _audit_details(src: Repository, report: ReplicationReport) -> dict[str, Any]:
    return {
        "from": src.config()["id"],
        "backups": len(report.copied_backups),
        "wal_files": report.wal_copied,
        "objects": report.objects,
        "bytes": report.bytes_copied,
        "server_side": report.server_side,
        "failed": len(report.failed),
    }


def _source_lease(src: Repository, ids: list[str]) -> Any:
    """The source's prune keeps what is being copied; read-only source credentials: a warning, no lease.

    Intents are not checked here (a clash would refuse the whole run): :func:`_being_pruned` skips just those.
    """
    return leases.shared(src, "replicate", ids, check_intents=False)


def _leased(todo: list[str], bodies: dict[str, dict]) -> list[str]:
    """What the destination lease names: the backups being copied and what they depend on (kept by a prune)."""
    deps = {d for bid in todo for d in _dependencies(bodies.get(bid) or {})}
    return [*todo, *sorted(deps - set(todo))]


def _no_prune_running(dst: Repository, lease: leases.HeldLease) -> None:
    """Refuse (LockHeld) while a prune runs at the destination: it could delete a parent, a group's member or the
    WAL a backup being copied needs (it cannot know them: their manifest is not there yet). Read after our lease
    is stored, so a prune starting later sees the lease and keeps what it names."""
    running = [x for x in leases.read_leases(dst).live if x.exclusive and x.lease_id != lease.lease_id]
    if running:  # any exclusive lease: a prune deleting only WAL names no backup
        holder = running[0]
        raise LockHeld(f"a prune is running at the destination ({holder.describe()}); nothing was copied",
                       hint="replicate again when it is done (the hourly run does)")  # fmt: skip


def _being_pruned(src: Repository, lease: Any, ids: list[str]) -> set[str]:
    """Ids a running prune at the source is deleting (read after our lease is stored: race-free, see leases)."""
    try:
        intents = leases.read_leases(src).intents(besides=getattr(lease, "lease_id", None))
    except SeedvaultError:
        return set()
    return set(ids) & set(intents)


def _dependencies(body: dict) -> list[str]:
    return [d for d in [body.get("parent"), *members_of(body)] if isinstance(d, str)]


def copy_order(todo: list[str], bodies: dict[str, dict]) -> list[str]:
    """``todo`` (newest first), each preceded by the dependencies it lacks: iterative, for chains of any length."""
    order: list[str] = []
    placed: set[str] = set()
    for root in todo:
        stack = [(root, False)]
        while stack:
            bid, expanded = stack.pop()
            if bid in placed:
                continue
            if expanded:
                placed.add(bid)
                order.append(bid)
                continue
            stack.append((bid, True))
            for dep in _dependencies(bodies.get(bid) or {}):
                if dep not in placed and dep in bodies:
                    stack.append((dep, False))
    return order


class _BackupCopier:
    """Copies backups one by one, each after the ones it depends on (parent, group members).

    One backup that cannot be copied (wrong twice, unreadable or gone at the source, refused by the destination)
    is reported and the others go on; only a repository that cannot be reached at all stops the run.
    """

    def __init__(
        self,
        src: Repository,
        dst: Repository,
        bodies: dict[str, dict],
        present: set[str],
        report: ReplicationReport,
        now: datetime,
        busy: set[str],
        progress: Callable[[str], None] | None,
    ) -> None:
        self.src, self.dst, self.bodies, self.report, self.now = src, dst, bodies, report, now
        self.done = set(present)
        self.failed: set[str] = set()
        self.busy = busy
        self.progress = progress
        self.policy = storagecost.policy_of(dst.storage)

    def copy(self, bid: str) -> bool:
        """Publish ``bid`` at the destination (its dependencies are earlier in the order); False if not."""
        if bid in self.done:
            return True
        body = self.bodies.get(bid)
        if bid in self.failed or bid in self.busy or body is None:
            return False
        missing = [dep for dep in _dependencies(body) if dep not in self.done]
        if missing:
            self._fail(bid, f"it depends on {missing[0]}, which is not at the destination")
            return False
        try:
            self._copy(bid, body)
        except StorageUnreachable:
            raise
        except ObjectNotFound as exc:  # pruned at the source meanwhile (or half gone): nothing to copy now
            self.report.skipped.append(f"{bid}: gone at the source ({exc.one_line()})")
            self.failed.add(bid)
            return False
        except SeedvaultError as exc:  # wrong twice, unreadable at the source, refused by the destination
            self._fail(bid, exc.one_line())
            return False
        self.done.add(bid)
        self.report.copied_backups.append(bid)
        if self.progress:
            self.progress(f"copied backup {bid}")
        return True

    def _fail(self, bid: str, why: str) -> None:
        self.failed.add(bid)
        self.report.failed.append(f"{bid}: {why}")
        log.warning("seedvault: warning: backup %s was not replicated: %s", bid, why)

    def _copy(self, bid: str, body: dict) -> None:
        src, dst = self.src.storage, self.dst.storage
        data_key = self.src.data_key(bid)
        prefix = layout.keys_prefix(bid)
        for info in src.list(prefix):  # key objects first (FORMAT.md section 7): only those missing
            if dst.exists(info.key):
                continue
            data = src.get_bytes(info.key)
            self.report.count(copy_verified(src, dst, info.key, size=len(data), check=same_bytes(data), data=data,
                                            replace_existing=True))  # fmt: skip
        faults.reached(FAULT_KEYS)
        options = self._options(body)
        for obj in body["objects"]:
            key = layout.data_key(bid, obj["name"])
            check = same_digest(int(obj["stored_size"]), str(obj["sha256"]))
            self.report.count(copy_verified(src, dst, key, size=int(obj["stored_size"]), check=check, options=options,
                                            replace_existing=True))  # fmt: skip
        if self.dst.data_key(bid) != data_key:  # our key object arrived and opens the same data key
            raise IntegrityError(f"backup {bid}: its key object at the destination opens another data key")
        for dep in _dependencies(body):  # a prune at the destination may have removed one meanwhile
            if not dst.exists(layout.manifest_key(dep)):
                raise BackupNotFound(f"backup {bid} depends on {dep}, which is no longer at the destination")
        faults.reached(FAULT_BEFORE_MANIFEST)
        stored = src.get_bytes(layout.manifest_key(bid))
        mf.open_(stored, data_key, bid)  # the manifest being published is the authentic one
        key = layout.manifest_key(bid)
        self.report.count(
            copy_verified(src, dst, key, size=len(stored), check=same_bytes(stored), options=options, data=stored)
        )
        faults.reached(FAULT_PUBLISHED)
        try:
            catalog.record(self.dst, body)
        except SeedvaultError as exc:  # the index is a cache: readers find the backup from its key objects
            log.warning("seedvault: warning: backup %s is not in the destination's index yet: %s", bid, exc.one_line())
        # Every stored byte was read back against the authenticated manifest's SHA-256 and size, and the key
        # object opened: a full verification of this copy, recorded as one (the replica's min_verified counts it).
        audit.record(self.dst, "verify", backup_ids=[bid], details={
            "scope": "full", "objects": len(body["objects"]), "raw_bytes": int(body.get("raw_size") or 0),
            "problems": 0, "method": "replicate-arrival"})  # fmt: skip

    def _options(self, body: dict) -> WriteOptions:
        """The destination's storage class and Object Lock for this backup (its lock counted from its start)."""
        started = _parse_time(str(body.get("started")))
        options = self.policy.backup(str(body.get("kind")), body.get("labels"), started)
        if options.lock is not None and options.lock.retain_until <= self.now + timedelta(minutes=1):
            options = WriteOptions(options.storage_class, None)  # its retention has passed already
        return options
