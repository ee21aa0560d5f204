"""``verify``: read every byte of a backup back and check it, reporting every problem found.

Per backup: the manifest authenticates (version first), the data key unwraps, and every object is read
through the chunk authenticator and the decompressor with its stored SHA-256, stored size and raw size
compared to the manifest. Like restic's checker it keeps going after a defect, so one run names them all.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from seedvault import audit, leases
from seedvault.errors import BackupNotFound, SeedvaultError
from seedvault.repository import Repository


@dataclass
class VerifyResult:
    backup_id: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    objects: int = 0
    raw_bytes: int = 0
    skipped: int = 0  # data objects left out by a sample (their manifest entry is still authenticated)

    def as_dict(self) -> dict:
        return {
            "id": self.backup_id,
            "ok": self.ok,
            "problems": self.problems,
            "objects": self.objects,
            "raw_bytes": self.raw_bytes,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class Sample:
    """A rotating slice of the data objects of all backups, like restic's ``--read-data-subset n/t``.

    Each object (backup id + object name) falls by a stable hash into one of ``groups`` = ceil(100/P) groups;
    one run reads group ``group`` (1-based), so every object is read within ``groups`` runs of rotating K.
    """

    percent: int
    group: int
    groups: int

    @classmethod
    def make(cls, percent: int, group: int | None = None, *, today: datetime | None = None) -> Sample:
        groups = math.ceil(100 / percent)
        if group is None:
            day = (today or datetime.now(UTC)).date().toordinal()
            group = day % groups + 1
        return cls(percent, group, groups)

    def holds(self, backup_id: str, name: str) -> bool:
        return object_group(backup_id, name, self.groups) == self.group

    def as_dict(self) -> dict:
        return {"percent": self.percent, "group": self.group, "groups": self.groups}


def object_group(backup_id: str, name: str, groups: int) -> int:
    """The 1-based sample group of one data object: stable across runs, machines and added backups."""
    digest = hashlib.sha256(f"{backup_id}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % groups + 1


def verify_backup(
    repo: Repository,
    backup_id: str,
    *,
    progress: Callable[[int], None] | None = None,
    sample: Sample | None = None,
) -> VerifyResult:
    """Every problem of one backup, in its result; raised instead: no such backup (BackupNotFound, exit 12)
    and a master key that cannot be had at all (a missing or unreadable key file: nothing could be checked).
    With ``sample`` the manifest and key are still authenticated, but only the sampled data objects read."""
    repo.master  # noqa: B018 - the configured key's problems are the command's, not this backup's
    with leases.shared(repo, "verify", [backup_id]), audit.audited(repo, "verify", [backup_id]) as ev:
        result = _verify_backup(repo, backup_id, progress=progress, sample=sample)
        ev.result = "ok" if result.ok else "failed"
        ev.details.update(scope="sample" if sample is not None else "full", objects=result.objects,
                          raw_bytes=result.raw_bytes, problems=len(result.problems))  # fmt: skip
        if result.problems:
            ev.details["error"] = result.problems[0]
        return result


def _verify_backup(
    repo: Repository, backup_id: str, *, progress: Callable[[int], None] | None, sample: Sample | None
) -> VerifyResult:
    result = VerifyResult(backup_id)
    try:
        data_key = repo.data_key(backup_id)
        body = repo.manifest(backup_id, data_key)
    except BackupNotFound:
        raise
    except SeedvaultError as exc:
        result.ok = False
        result.problems.append(exc.one_line())
        return result
    for entry in body["objects"]:
        if sample is not None and not sample.holds(backup_id, entry["name"]):
            result.skipped += 1
            continue
        try:
            for piece in repo.read_object(backup_id, entry["name"], body=body, data_key=data_key, progress=progress):
                result.raw_bytes += len(piece)
            result.objects += 1
        except SeedvaultError as exc:
            result.ok = False
            result.problems.append(exc.one_line())
    if body.get("kind") == "platform":  # a group is only as good as its members and the WAL to its restore point
        from seedvault.ops.platform import check_group

        try:
            check_group(repo, backup_id)
        except SeedvaultError as exc:
            result.ok = False
            result.problems.append(exc.one_line())
    return result


def verify_all(
    repo: Repository, *, progress: Callable[[int], None] | None = None, sample: Sample | None = None
) -> list[VerifyResult]:
    """Every complete backup verified (one that is deleted meanwhile is left out)."""
    return _verify_ids(repo, repo.backup_ids(), progress=progress, sample=sample)


def latest_ids(repo: Repository) -> tuple[list[str], list[str]]:
    """The newest readable backup of each (kind, name label) pair, oldest first; and the unreadable backups
    (their kind and label are unknown, so they cannot be placed in a pair)."""
    from seedvault.catalog import Catalog

    newest, unreadable = Catalog(repo).latest_per(lambda b: (b.get("kind"), b.get("labels", {}).get("name")))
    return sorted(e.backup_id for e in newest.values()), [e.backup_id for e in unreadable]


def verify_latest(
    repo: Repository, *, progress: Callable[[int], None] | None = None
) -> tuple[list[VerifyResult], list[str]]:
    """The newest readable backup of each (kind, label) verified; also the unreadable backups skipped."""
    ids, unreadable = latest_ids(repo)
    return _verify_ids(repo, ids, progress=progress), unreadable


def _verify_ids(
    repo: Repository, ids: list[str], *, progress: Callable[[int], None] | None, sample: Sample | None = None
) -> list[VerifyResult]:
    results = []
    for bid in ids:
        try:
            results.append(verify_backup(repo, bid, progress=progress, sample=sample))
        except BackupNotFound:
            continue
    return results
