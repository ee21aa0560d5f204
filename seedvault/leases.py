"""Leases: a running operation says so in the repository, so that nothing deletes what it is using.

A lease is one small object, ``v1/leases/<lease id>.json`` (FORMAT.md "Leases"): who holds it (host, pid, OS
user), the operation, the backup ids it names, when it started and when it was last refreshed. A holder
rewrites it every minute (``REFRESH``) from a background thread and deletes it when done; a lease whose object
was not rewritten for ``lease_stale`` (a setting, default 15 minutes, at least 5) belongs to a process that
died, and is reported, then ignored. Staleness is judged by the storage's own modification time of the object
(one clock for every holder: the S3 server's, or the local file system's), not by the holder's clock. A lease
held on this very host by a process that no longer exists is stale at once (restic judges its locks the same
way): a ``kill -9`` on the backup host does not hold back cleanup for ``lease_stale``.

Why a lease and not only the cleanup grace: a backup may write nothing visible for longer than any grace (a
slow dump start, an S3 object buffered below one part) and pgBackRest (#2622), Barman (#200) and restic
(#2452) all lost backups to a cleanup or expire that could not see a running operation. Ordering makes it
race-free without a lock: a writer stores its lease *before* its first object, and ``cleanup`` lists the
objects *before* the leases, so every object cleanup saw belongs either to a lease it also sees or to a
writer that is gone.

Leases hold no secrets and are not authenticated: whoever can write the bucket can delete any object anyway;
a forged lease can only make cleanup keep more.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from seedvault.errors import LockHeld, SeedvaultError
from seedvault.format import layout
from seedvault.format.fields import Fields, corrupted, load_json
from seedvault.repository import Repository

log = logging.getLogger(__name__)

FORMAT = "seedvault-lease"
VERSION = 1
DEFAULT_STALE = timedelta(minutes=15)
MIN_STALE = timedelta(minutes=5)  # five refreshes missed: never a live holder on a slow link
REFRESH = timedelta(minutes=1)


def lease_path(lease_id: str) -> str:
    return f"{layout.LEASES}{lease_id}.json"


@dataclass(frozen=True)
class Lease:
    """One lease as read back (``modified`` is the storage's time of its last refresh)."""

    lease_id: str
    operation: str
    host: str
    pid: int
    user: str
    backup_ids: tuple[str, ...]
    started: str
    modified: datetime
    stale_reason: str = ""  # why it is stale ("" while live)
    exclusive: bool = False  # prune's: the backups it names are about to be deleted

    def describe(self) -> str:
        who = f"{self.operation} by {self.user} on {self.host} (pid {self.pid}, lease {self.lease_id})"
        return f"{who}: {self.stale_reason}" if self.stale_reason else who

    def as_dict(self) -> dict:
        return {
            "lease_id": self.lease_id,
            "operation": self.operation,
            "host": self.host,
            "pid": self.pid,
            "user": self.user,
            "backup_ids": list(self.backup_ids),
            "started": self.started,
            "refreshed": self.modified.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "mode": "exclusive" if self.exclusive else "shared",
            **({"stale_reason": self.stale_reason} if self.stale_reason else {}),
        }


@dataclass
class LeaseListing:
    live: list[Lease] = field(default_factory=list)
    stale: list[Lease] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # lease keys that could not be parsed

    def held_ids(self, *, besides: str | None = None) -> dict[str, Lease]:
        """Backup id -> the live shared lease that names it (``besides``: a lease id to leave out)."""
        return {
            bid: lease
            for lease in self.live
            if not lease.exclusive and lease.lease_id != besides
            for bid in lease.backup_ids
        }

    def intents(self, *, besides: str | None = None) -> dict[str, Lease]:
        """Backup id -> the live exclusive lease (a prune) that is about to delete it."""
        return {
            bid: lease
            for lease in self.live
            if lease.exclusive and lease.lease_id != besides
            for bid in lease.backup_ids
        }


class HeldLease:
    """A lease this process holds: stored at once, refreshed in the background, deleted by :meth:`release`."""

    def __init__(
        self,
        repo: Repository,
        operation: str,
        backup_ids: Iterable[str] = (),
        *,
        refresh: timedelta = REFRESH,
        exclusive: bool = False,
    ) -> None:
        self.repo = repo
        self.operation = operation
        self.exclusive = exclusive
        self.backup_ids = list(backup_ids)
        self.lease_id = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}-{secrets.token_hex(4)}"
        self.key = lease_path(self.lease_id)
        self.started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._interval = refresh.total_seconds()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.refresh_failures = 0
        self.repo.storage.put_bytes(self.key, self._body())
        self._thread = threading.Thread(target=self._refresh_loop, name=f"lease-{operation}", daemon=True)
        self._thread.start()

    def _body(self) -> bytes:
        body = {
            "format": FORMAT,
            "version": VERSION,
            "lease_id": self.lease_id,
            "operation": self.operation,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": _user(),
            "backup_ids": self.backup_ids,
            "started": self.started,
            "mode": "exclusive" if self.exclusive else "shared",
            "refreshed": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        return json.dumps(body, sort_keys=True, indent=2).encode() + b"\n"

    def refresh(self) -> None:
        with self._lock:
            if not self._stop.is_set():
                self.repo.storage.put_bytes(self.key, self._body(), overwrite=True)

    def add(self, backup_id: str) -> None:
        """Name one more backup (stored at once, before the caller touches it); LockHeld if a prune is deleting it."""
        self.backup_ids.append(backup_id)
        self.refresh()
        if not self.exclusive:
            self.check_no_intent()

    def check_no_intent(self) -> None:
        """Refuse (LockHeld) when a running prune is about to delete a backup this lease names.

        Called after the lease is stored: a prune stores its intent first and then reads the shared leases,
        so either it sees this lease and keeps the backup, or this check sees its intent.
        """
        intents = read_leases(self.repo).intents(besides=self.lease_id)
        clash = sorted(set(self.backup_ids) & set(intents))
        if clash:
            self.release()
            raise LockHeld(
                f"backup {clash[0]} is being deleted by {intents[clash[0]].describe()}",
                hint="it is outside the retention policy; choose another backup, or pin it and retry after the prune",
            )

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except SeedvaultError as exc:  # keep trying: a lease left unrefreshed only turns stale
                self.refresh_failures += 1
                log.warning("lease %s could not be refreshed: %s", self.lease_id, exc.one_line())

    def release(self) -> None:
        """Stop refreshing and delete the lease (best effort: an undeleted one turns stale and is ignored)."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
        with contextlib.suppress(SeedvaultError):
            self.repo.storage.delete([self.key])

    def __enter__(self) -> HeldLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _NoLease:
    """What a reader holds when its lease could not be stored (read-only credentials during an outage)."""

    def add(self, backup_id: str) -> None:
        return None

    def release(self) -> None:
        return None

    def __enter__(self) -> _NoLease:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def shared(
    repo: Repository, operation: str, backup_ids: Iterable[str] = (), *, reader: bool = True, check_intents: bool = True
) -> HeldLease | _NoLease:
    """Hold a lease naming ``backup_ids`` (use as a context manager).

    A ``reader`` (restore, get, verify) whose lease cannot be stored (read-only credentials, a bucket that
    refuses writes during an outage) goes on with a warning: a restore must work when only reading does.
    A writer (``reader=False``) cannot run without one anyway.
    """
    try:
        held = HeldLease(repo, operation, backup_ids)
    except SeedvaultError as exc:
        if not reader:
            raise
        log.warning("no lease for %s (%s): nothing stops a concurrent delete of what it reads", operation,
                    exc.one_line())  # fmt: skip
        return _NoLease()
    if reader and check_intents and held.backup_ids:  # without: the caller leaves out what a prune is deleting
        held.check_no_intent()
    return held


def read_leases(repo: Repository, *, stale_after: timedelta | None = None, now: datetime | None = None) -> LeaseListing:
    """Every lease in the repository, split into live and stale.

    Stale: not refreshed for ``stale_after`` by the storage's clock, or held on this host by a process that
    is gone.
    """
    now = now or datetime.now(UTC)
    limit = stale_after or DEFAULT_STALE
    here = socket.gethostname()
    out = LeaseListing()
    for info in repo.storage.list(layout.LEASES):
        try:
            lease = _parse(repo.storage.get_bytes(info.key), info.key, info.modified)
        except SeedvaultError:  # gone meanwhile (released) or damaged
            if repo.storage.exists(info.key):
                out.unreadable.append(info.key)
            continue
        age = now - info.modified
        if age > limit:
            out.stale.append(
                replace(lease, stale_reason=f"not refreshed for {_minutes(age)} (lease_stale {_minutes(limit)})")
            )
        elif lease.host == here and not _alive(lease.pid):
            out.stale.append(replace(lease, stale_reason=f"process {lease.pid} no longer runs on this host"))
        else:
            out.live.append(lease)
    return out


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists here (one of another user counts; pid 0 or less never does)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _minutes(delta: timedelta) -> str:
    return f"{int(delta.total_seconds() // 60)}m"


def remove_stale(repo: Repository, listing: LeaseListing) -> list[str]:
    """Delete the stale leases of ``listing``; returns their ids."""
    repo.storage.delete([lease_path(lease.lease_id) for lease in listing.stale])
    return [lease.lease_id for lease in listing.stale]


def _parse(data: bytes, key: str, modified: datetime) -> Lease:
    fail = corrupted(f"lease {key}", SeedvaultError)
    body = Fields(load_json(data, fail), fail)
    if body.raw("format") != FORMAT or body.raw("version") != VERSION:
        raise fail("not a version-1 seedvault lease")
    ids = tuple(i for i in body.texts("backup_ids") if layout.is_backup_id(i))
    return Lease(
        lease_id=str(body.text("lease_id", max_len=128)),
        operation=str(body.text("operation", max_len=128)),
        host=str(body.text("host", max_len=256)),
        pid=int(body.int("pid") or 0),
        user=str(body.text("user", max_len=256)),
        backup_ids=ids,
        started=str(body.text("started", max_len=64)),
        modified=modified,
        exclusive=body.raw("mode", optional=True) == "exclusive",
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no name for this uid (containers): the uid says enough
        return str(os.getuid())
