"""The WAL half of ``replicate``: epoch keys, histories, then records oldest first, each authenticated on arrival.

Why this order: a record authenticates only with its epoch's key, so the epoch key objects go first (only
those missing: a destination that rotated its keys has objects of its own, never replaced); histories next,
because a recovery reads them before any segment of their timeline; then records by storage key, which sorts
by timeline and segment, so that at any moment the destination holds an unbroken prefix of the archive and a
PITR from it reaches as far as the copy has come.

A copied record is fetched back from the destination exactly as recovery would fetch it (header MAC with the
destination's epoch key object, name, system, timeline, every chunk, size, page header): a wrong copy is
deleted and copied once more, then reported.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from seedvault import faults, storagecost
from seedvault.errors import ObjectNotFound, SeedvaultError, StorageUnreachable
from seedvault.format import layout
from seedvault.ops.replicate_copy import copy_verified, same_bytes
from seedvault.repository import Repository
from seedvault.sources.postgres.wal.store import WalObject, WalStore, system_ids
from seedvault.storage.base import Storage

if TYPE_CHECKING:
    from seedvault.ops.replicate import ReplicationReport, Wanted

FAULT_EPOCHS = "replicate-wal-epochs-copied"
FAULT_RECORD = "replicate-wal-record-copied"


def replicate_wal(
    src: Repository,
    dst: Repository,
    wanted: Wanted,
    report: ReplicationReport,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Copy the wanted WAL the destination lacks, per system; a timeline stops at its first failed record."""
    for sid in system_ids(src):
        src_store, dst_store = WalStore(src, sid), WalStore(dst, sid)
        present = {o.key for o in dst_store.list()}  # listed now: a prune there may have run since the plan
        todo: list[WalObject] = []
        for o in src_store.list():
            if o.key in present:
                report.wal_present += 1
            elif o.key not in wanted.wal:
                report.wal_not_wanted += 1
            else:
                todo.append(o)
        if not todo:
            continue
        try:
            _copy_epoch_keys(src.storage, dst.storage, sid, report)
        except StorageUnreachable:
            raise
        except SeedvaultError as exc:  # without its keys no record of the system authenticates there
            report.failed.append(f"WAL of system {sid}: epoch keys not copied: {exc.one_line()}")
            continue
        faults.reached(FAULT_EPOCHS)
        _copy_records(src, dst, dst_store, sid, todo, report)
        if progress:
            progress(f"copied {report.wal_copied} WAL files of system {sid}")


def _copy_records(
    src: Repository, dst: Repository, dst_store: WalStore, sid: str, todo: list[WalObject], report: ReplicationReport
) -> None:
    """Histories first, then records in key order; after a failure nothing later of that timeline is copied.

    Why stop: the destination must hold an unbroken prefix of each timeline's archive, so that a recovery from it
    ends where the copy ends and says so, never past a hole that only looks like the end of the archive.
    """
    options = storagecost.policy_of(dst.storage).wal()
    todo.sort(key=lambda o: (o.kind != "history", o.key))
    broken: dict[int, str] = {}  # timeline -> the record that failed
    for o in todo:
        if o.kind != "history" and o.timeline in broken:
            report.wal_held_back += 1
            continue
        try:
            copied = copy_verified(
                src.storage, dst.storage, o.key, size=o.size, check=_authentic(dst_store, o), options=options
            )
        except StorageUnreachable:
            raise
        except ObjectNotFound:  # pruned at the source meanwhile
            report.skipped.append(f"WAL {o.name} (system {sid}): gone at the source")
            continue
        except SeedvaultError as exc:
            report.failed.append(f"WAL {o.name} (system {sid}): {exc.one_line()}")
            broken.setdefault(o.timeline, o.name)
            continue
        report.count(copied)
        report.wal_copied += 1
        faults.reached(FAULT_RECORD)
    for tli, name in broken.items():
        report.failed.append(f"WAL of system {sid} timeline {tli}: nothing after {name} was copied")


def _copy_epoch_keys(src: Storage, dst: Storage, sid: str, report: ReplicationReport) -> None:
    prefix = layout.wal_keys_prefix(sid)
    have = {o.key for o in dst.list(prefix)}
    for info in src.list(prefix):
        if info.key in have:
            continue
        data = src.get_bytes(info.key)
        report.count(copy_verified(src, dst, info.key, size=len(data), check=same_bytes(data), data=data))


def _authentic(store: WalStore, o: WalObject):  # noqa: ANN202 - a replicate_copy.Check
    """The check for a WAL record: fetch it from the destination as recovery would (into a scratch file)."""

    def check(storage: Storage, key: str) -> str | None:
        with tempfile.TemporaryDirectory(prefix="seedvault-replicate-") as scratch:
            store.fetch(o.name, Path(scratch) / "wal", key=key, partial=False)
        return None

    return check
