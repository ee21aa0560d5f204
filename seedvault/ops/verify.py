"""``verify``: read every byte of a backup back and check it, reporting every problem found.

Per backup: the manifest authenticates (version first), the data key unwraps, and every object is read
through the chunk authenticator and the decompressor with its stored SHA-256, stored size and raw size
compared to the manifest. Like restic's checker it keeps going after a defect, so one run names them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from seedvault.errors import BackupNotFound, SeedvaultError
from seedvault.repository import Repository


@dataclass
class VerifyResult:
    backup_id: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    objects: int = 0
    raw_bytes: int = 0

    def as_dict(self) -> dict:
        return {
            "id": self.backup_id,
            "ok": self.ok,
            "problems": self.problems,
            "objects": self.objects,
            "raw_bytes": self.raw_bytes,
        }


def verify_backup(repo: Repository, backup_id: str, *, progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Every problem of one backup, in its result; raised instead: no such backup (BackupNotFound, exit 12)
    and a master key that cannot be had at all (a missing or unreadable key file: nothing could be checked)."""
    result = VerifyResult(backup_id)
    repo.master  # noqa: B018 - the configured key's problems are the command's, not this backup's
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
        try:
            for piece in repo.read_object(backup_id, entry["name"], body=body, data_key=data_key, progress=progress):
                result.raw_bytes += len(piece)
            result.objects += 1
        except SeedvaultError as exc:
            result.ok = False
            result.problems.append(exc.one_line())
    return result


def verify_all(repo: Repository, *, progress: Callable[[int], None] | None = None) -> list[VerifyResult]:
    """Every complete backup verified (one that is deleted meanwhile is left out)."""
    results = []
    for bid in repo.backup_ids():
        try:
            results.append(verify_backup(repo, bid, progress=progress))
        except BackupNotFound:
            continue
    return results
