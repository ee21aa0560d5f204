"""Key rotation and retirement: re-wrap data keys, never re-encrypt data or rewrite manifests.

``rotate``: for every backup, unwrap its data key with the current master key, wrap it under the new
one, store that as a new key object and read it back to prove the new key opens it. Old key objects stay,
so the old key keeps working until ``retire`` removes its key objects, which it does for a backup only
after checking that another key object there opens with the key the operator now uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seedvault.crypto.keys import MasterKey
from seedvault.errors import ObjectExists, SeedvaultError, UsageError, VerificationFailed
from seedvault.format import layout
from seedvault.repository import Repository


@dataclass
class KeyReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _all_backup_ids(repo: Repository) -> list[str]:
    ids = {layout.backup_id_of(o.key) for o in repo.storage.list(layout.KEYS)}
    return sorted(i for i in ids if i)


def rotate(repo: Repository, new: MasterKey) -> KeyReport:
    old = repo.master
    if new.key_id == old.key_id:
        raise UsageError(f"the new key is the current key ({old.key_id})")
    report = KeyReport()
    for bid in _all_backup_ids(repo):
        try:
            data_key = repo.data_key(bid, old)
            try:
                repo.write_key_object(bid, data_key, new)
            except ObjectExists:
                pass  # an earlier (interrupted) rotation wrote it; the check below proves it right
            if repo.data_key(bid, new) != data_key:
                raise VerificationFailed(f"new key object of backup {bid} does not open to the same data key")
            report.done.append(bid)
        except SeedvaultError as exc:
            report.failed[bid] = exc.one_line()
    return report


def retire(repo: Repository, key_id: str) -> KeyReport:
    current = repo.master
    if key_id == current.key_id:
        raise UsageError(f"cannot retire {key_id}: it is the key in use; configure the new key first")
    if not layout.KEY_ID_RE.match(key_id):
        raise UsageError(f"{key_id!r} is not a key id (k- followed by 16 hex digits)")
    report = KeyReport()
    for bid in _all_backup_ids(repo):
        if key_id not in repo.key_ids(bid):
            report.skipped.append(bid)
            continue
        try:
            repo.data_key(bid, current)  # proves the backup stays readable without the retired key
        except SeedvaultError as exc:
            report.failed[bid] = exc.one_line()
            continue
        repo.storage.delete([layout.key_object(bid, key_id)])
        report.done.append(bid)
    return report
