"""Key rotation and retirement: re-wrap data keys, never re-encrypt data or rewrite manifests or WAL.

A repository holds two kinds of wrapped key, and both are handled alike: each backup's data key
(``v1/keys/<backup id>/<key id>.json``, FORMAT.md 6) and each archived-WAL epoch key
(``v1/wal/<system id>/keys/<epoch>/<key id>.json``, FORMAT.md 8.2), for every system id in the repository;
the repository secret (``v1/repokey/<key id>.json``, seedvault.repokey) is re-wrapped and retired the same way.

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

from seedvault import repokey
from seedvault.crypto.keys import MasterKey, constant_time_equal
from seedvault.errors import ObjectExists, SeedvaultError, UsageError, VerificationFailed, WrongKey
from seedvault.format import layout
from seedvault.repository import Repository
from seedvault.wal import epochs
from seedvault.wal.store import system_ids

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
    # The repository secret (seedvault.repokey; the catalog's and audit log's MAC keys): "done", "skipped" or
    # "" (the repository has none yet); a failure is in ``failed`` under "repository-secret".
    repository_secret: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def all_failed(self) -> list[tuple[str, str]]:
        return list(self.failed.items()) + list(self.wal_failed.items())


@dataclass(frozen=True)
class _Wrapped:
    """One wrapped key: a backup's data key, or a WAL epoch's key (``system_id`` and ``epoch`` set)."""

    name: str  # backup id, or wal/<system id>/<epoch>
    key_ids: frozenset[str]
    system_id: str | None = None
    epoch: str | None = None
    secret: bool = False  # the repository secret (seedvault.repokey), wrapped like a data key

    @property
    def is_wal(self) -> bool:
        return self.system_id is not None

    def what(self) -> str:
        if self.secret:
            return "the repository secret"
        return f"WAL epoch {self.epoch} of system {self.system_id}" if self.is_wal else f"backup {self.name}"

    def path(self, key_id: str) -> str:
        if self.secret:
            return repokey.secret_path(key_id)
        if self.system_id is not None and self.epoch is not None:
            return epochs.epoch_key_path(self.system_id, self.epoch, key_id)
        return layout.key_object(self.name, key_id)

    def open(self, repo: Repository, master: MasterKey) -> bytes:
        if self.secret:
            return repokey.read_secret(repo, master)
        if self.system_id is not None and self.epoch is not None:
            return epochs.read_epoch_key(repo, self.system_id, self.epoch, master)
        return repo.data_key(self.name, master)

    def store(self, repo: Repository, key: bytes, master: MasterKey) -> None:
        if self.secret:
            repokey.write_secret(repo, key, master)
        elif self.system_id is not None and self.epoch is not None:
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


def _secret(repo: Repository) -> list[_Wrapped]:
    """The repository secret, if the repository has one (its first audit event or catalog entry made it)."""
    ids = repokey.wrapped_for(repo)
    return [_Wrapped("repository-secret", frozenset(ids), secret=True)] if ids else []


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
    if item.secret:
        report.repository_secret = "" if error is not None else "done" if outcome == "done" else "skipped"
    if error is not None:
        failed[item.name] = error
    elif item.secret:
        return
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
    for item, outcome, error in _each(_backups(repo) + _wal_epochs(repo, system_ids(repo)) + _secret(repo), rewrap):
        _record(report, item, outcome, error)
    return report


def retire(repo: Repository, key_id: str) -> KeyReport:
    """Delete ``key_id``'s key objects, only once the configured key is proven to open every one of them."""
    current = repo.master
    if key_id == current.key_id:
        raise UsageError(f"cannot retire {key_id}: it is the key in use; configure the new key first")
    if not layout.KEY_ID_RE.match(key_id):
        raise UsageError(f"{key_id!r} is not a key id (k- followed by 16 hex digits)")
    sids = system_ids(repo)
    items = _backups(repo) + _wal_epochs(repo, sids) + _secret(repo)
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
    if refused.all_failed():
        raise _refusal(key_id, current.key_id, refused)

    repo.storage.delete([i.path(key_id) for i in affected])  # every replacement was verified above
    for item in affected:
        _record(report, item, "done", None)

    # A writer still running with the retired key may have wrapped something for it since the listing.
    late = [i for i in _backups(repo) + _wal_epochs(repo, sids) + _secret(repo) if key_id in i.key_ids]
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
    backups = [name for name in refused.failed if name != "repository-secret"]
    if backups:
        parts.append(f"{_count(len(backups), 'backup')} (first {backups[0]})")
    if refused.wal_failed:
        first = next(iter(refused.wal_failed))
        _, sid, epoch = first.split("/")
        parts.append(f"{_count(len(refused.wal_failed), 'WAL epoch')} (first {epoch} of system {sid})")
    if "repository-secret" in refused.failed:
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
