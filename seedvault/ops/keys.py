"""Key rotation and retirement: re-wrap data keys, never re-encrypt data or rewrite manifests or WAL.

A repository holds two kinds of wrapped key, and both are handled alike: each backup's data key
(``v1/keys/<backup id>/<key id>.json``, FORMAT.md 6) and each archived-WAL epoch key
(``v1/wal/<system id>/keys/<epoch>/<key id>.json``, FORMAT.md 8.2), for every system id in the repository.

``rotate``: unwrap each with the current master key, wrap it under the new one as one more key object
(no overwrite, so a re-run keeps what an earlier run wrote and adds only what is missing), and read that
back to prove the new key opens it to the same key. Old key objects stay, so the old key keeps working
until it is retired.

``retire``: first proves that every backup and WAL epoch wrapped for the retired key opens with the key
the operator now uses. If one does not, it refuses and deletes nothing. Only then does it remove the
retired key's objects, and it finally checks that no new one appeared meanwhile (a writer still using
the old key), which would still need the old key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from seedvault import audit, repokey
from seedvault.crypto.keys import MasterKey, constant_time_equal
from seedvault.errors import ObjectExists, SeedvaultError, UsageError, VerificationFailed, WrongKey
from seedvault.format import layout
from seedvault.repository import Repository
from seedvault.sources.postgres.wal import epochs
from seedvault.sources.postgres.wal.store import system_ids

WORKERS = 8  # key objects are tiny: the time is round trips, which overlap well


@dataclass
class KeyReport:
    """Per backup id (``done``...) and per WAL epoch, named by its scope ``wal/<system id>/<epoch>``."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wal_done: list[str] = field(default_factory=list)
    wal_skipped: list[str] = field(default_factory=list)
    wal_failed: dict[str, str] = field(default_factory=dict)
    repository_secret: str = "none"  # done | skipped | none (the repository has no secret yet) | failed: <why>

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def all_failed(self) -> list[tuple[str, str]]:
        secret = self.repository_secret
        extra = [("repository secret", secret.removeprefix("failed: "))] if secret.startswith("failed") else []
        return list(self.failed.items()) + list(self.wal_failed.items()) + extra

    def counts(self) -> dict[str, object]:
        """What the audit event records."""
        return {
            "backups": len(self.done),
            "backups_skipped": len(self.skipped),
            "backups_failed": len(self.failed),
            "wal_epochs": len(self.wal_done),
            "wal_epochs_failed": len(self.wal_failed),
            "repository_secret": self.repository_secret.split(":", 1)[0],
        }


@dataclass(frozen=True)
class _Wrapped:
    """One wrapped key: a backup's data key, or a WAL epoch's key (``system_id`` and ``epoch`` set)."""

    name: str  # backup id, or wal/<system id>/<epoch>
    key_ids: frozenset[str]
    system_id: str | None = None
    epoch: str | None = None

    @property
    def is_wal(self) -> bool:
        return self.system_id is not None

    def what(self) -> str:
        return f"WAL epoch {self.epoch} of system {self.system_id}" if self.is_wal else f"backup {self.name}"

    def path(self, key_id: str) -> str:
        if self.system_id is not None and self.epoch is not None:
            return epochs.epoch_key_path(self.system_id, self.epoch, key_id)
        return layout.key_object(self.name, key_id)

    def open(self, repo: Repository, master: MasterKey) -> bytes:
        if self.system_id is not None and self.epoch is not None:
            return epochs.read_epoch_key(repo, self.system_id, self.epoch, master)
        return repo.data_key(self.name, master)

    def store(self, repo: Repository, key: bytes, master: MasterKey) -> None:
        if self.system_id is not None and self.epoch is not None:
            epochs.write_epoch_key(repo, self.system_id, self.epoch, key, master)
        else:
            repo.write_key_object(self.name, key, master)


def _backups(repo: Repository) -> list[_Wrapped]:
    wraps: dict[str, set[str]] = {}
    for info in repo.storage.list(layout.KEYS):
        bid = layout.backup_id_of(info.key)
        if bid:
            wraps.setdefault(bid, set()).add(info.key.rsplit("/", 1)[-1].removesuffix(".json"))
    return [_Wrapped(bid, frozenset(ids)) for bid, ids in sorted(wraps.items())]


def _wal_epochs(repo: Repository, sids: list[str]) -> list[_Wrapped]:
    return [
        _Wrapped(epochs.scope(sid, epoch), frozenset(ids), sid, epoch)
        for sid in sids
        for epoch, ids in epochs.epoch_wraps(repo, sid).items()
    ]


def _each(items: list[_Wrapped], fn: Callable[[_Wrapped], str]) -> list[tuple[_Wrapped, str | None, str | None]]:
    """``(item, outcome, error line)`` of ``fn`` on every item, in order; a few at a time."""

    def one(item: _Wrapped) -> tuple[_Wrapped, str | None, str | None]:
        try:
            return item, fn(item), None
        except SeedvaultError as exc:
            return item, None, exc.one_line()

    if not items:
        return []
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="seedvault-keys") as pool:
        return list(pool.map(one, items))


def _record(report: KeyReport, item: _Wrapped, outcome: str | None, error: str | None) -> None:
    done, skipped, failed = (
        (report.wal_done, report.wal_skipped, report.wal_failed)
        if item.is_wal
        else (report.done, report.skipped, report.failed)
    )
    if error is not None:
        failed[item.name] = error
    elif outcome == "done":
        done.append(item.name)
    else:
        skipped.append(item.name)


def rotate(repo: Repository, new: MasterKey) -> KeyReport:
    """Wrap every backup's and WAL epoch's key under ``new`` too (``done``; ``skipped``: it was already)."""
    old = repo.master
    if new.key_id == old.key_id:
        raise UsageError(f"the new key is the current key ({old.key_id})")

    def rewrap(item: _Wrapped) -> str:
        if old.key_id not in item.key_ids:
            if new.key_id in item.key_ids:  # written under the new key (or rotated and the old one retired)
                item.open(repo, new)
                return "skipped"
            listed = ", ".join(sorted(item.key_ids)) or "none"
            raise WrongKey(f"{item.what()} is not wrapped for the current key {old.key_id} (wrapped for: {listed})")
        key = item.open(repo, old)
        outcome = "done"
        try:
            item.store(repo, key, new)
        except ObjectExists:
            outcome = "skipped"  # an earlier (maybe interrupted) rotation wrote it; the check below proves it right
        if not constant_time_equal(item.open(repo, new), key):
            raise VerificationFailed(f"the new key object of {item.what()} does not open to the same key")
        return outcome

    report = KeyReport()
    for item, outcome, error in _each(_backups(repo) + _wal_epochs(repo, system_ids(repo)), rewrap):
        _record(report, item, outcome, error)
    try:
        repokey.secret(repo, create=True)  # made now, if missing, so that it is rotated with the rest
        report.repository_secret = _rotate_secret(repo, old, new)
    except SeedvaultError as exc:
        report.repository_secret = f"failed: {exc.one_line()}"
    audit.record(repo, "key-rotate", result="failed" if report.all_failed() else "ok",
                 details={"old_key_id": old.key_id, "new_key_id": new.key_id, **report.counts()})  # fmt: skip
    return report


def _rotate_secret(repo: Repository, old: MasterKey, new: MasterKey) -> str:
    """The repository secret (audit log, catalog) wrapped under ``new`` too, read back and compared."""
    wrapped = repokey.wrapped_for(repo)
    if not wrapped:
        return "none"
    if old.key_id not in wrapped:
        if new.key_id in wrapped:
            repokey.read_secret(repo, new)
            return "skipped"
        raise WrongKey(f"the repository secret is not wrapped for the current key {old.key_id}")
    secret = repokey.read_secret(repo, old)
    outcome = "done"
    try:
        repokey.write_secret(repo, secret, new)
    except ObjectExists:
        outcome = "skipped"
    if not constant_time_equal(repokey.read_secret(repo, new), secret):
        raise VerificationFailed("the new repository secret object does not open to the same secret")
    return outcome


def retire(repo: Repository, key_id: str) -> KeyReport:
    """Delete ``key_id``'s key objects, only once the configured key is proven to open every one of them."""
    current = repo.master
    if key_id == current.key_id:
        raise UsageError(f"cannot retire {key_id}: it is the key in use; configure the new key first")
    if not layout.KEY_ID_RE.match(key_id):
        raise UsageError(f"{key_id!r} is not a key id (k- followed by 16 hex digits)")
    sids = system_ids(repo)
    items = _backups(repo) + _wal_epochs(repo, sids)
    affected = [i for i in items if key_id in i.key_ids]
    report = KeyReport()
    for item in items:
        if key_id not in item.key_ids:
            _record(report, item, "skipped", None)

    def readable(item: _Wrapped) -> str:
        item.open(repo, current)  # proves it stays readable without the retired key
        return "done"

    refused = KeyReport()
    for item, _, error in _each(affected, readable):
        if error is not None:
            _record(refused, item, None, error)
    secret_affected = key_id in repokey.wrapped_for(repo)
    if secret_affected:
        try:
            repokey.read_secret(repo, current)  # the audit log and catalog stay readable without it
        except SeedvaultError as exc:
            refused.repository_secret = f"failed: {exc.one_line()}"
    if refused.all_failed():
        if not refused.repository_secret.startswith("failed"):  # else the audit key itself is out of reach
            audit.record(repo, "key-retire", result="refused", details={"key_id": key_id, **refused.counts()})
        raise _refusal(key_id, current.key_id, refused)

    doomed = [i.path(key_id) for i in affected] + ([repokey.secret_path(key_id)] if secret_affected else [])
    repo.storage.delete(doomed)  # every replacement was verified above
    for item in affected:
        _record(report, item, "done", None)
    report.repository_secret = "done" if secret_affected else "skipped"
    audit.record(repo, "key-retire", details={"key_id": key_id, "current_key_id": current.key_id, **report.counts()})

    # A writer still running with the retired key may have wrapped something for it since the listing.
    late = [i for i in _backups(repo) + _wal_epochs(repo, sids) if key_id in i.key_ids]
    if late:
        more = f" and {len(late) - 1} more" if len(late) > 1 else ""
        raise VerificationFailed(
            f"{key_id} was retired from {_count(len(report.done), 'backup')} and "
            f"{_count(len(report.wal_done), 'WAL epoch')}, but {late[0].what()}{more} got a key object for it "
            "meanwhile, which was kept",
            hint="something still writes with the old key: give it the new key, run 'seedvault key rotate' "
            "again with the old key configured, then retire again",
        )
    return report


def _refusal(key_id: str, current_id: str, refused: KeyReport) -> VerificationFailed:
    parts = []
    if refused.failed:
        parts.append(f"{_count(len(refused.failed), 'backup')} (first {next(iter(refused.failed))})")
    if refused.wal_failed:
        first = next(iter(refused.wal_failed))
        _, sid, epoch = first.split("/")
        parts.append(f"{_count(len(refused.wal_failed), 'WAL epoch')} (first {epoch} of system {sid})")
    if refused.repository_secret.startswith("failed"):
        parts.append("the repository secret")
    name, why = refused.all_failed()[0]
    return VerificationFailed(
        f"refusing to retire {key_id}: {' and '.join(parts)} cannot be opened with the configured key "
        f"{current_id}; nothing was deleted; {name}: {why}",
        hint=f"run 'seedvault key rotate' to {current_id} again with {key_id} configured (it adds only the "
        "missing key objects), then retire again",
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
