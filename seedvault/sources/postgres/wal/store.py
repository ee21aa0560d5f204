"""The WAL store of one database system: epoch keys, push (idempotent, never overwriting), fetch, catalog.

Storage keys (FORMAT.md "WAL objects")::

    v1/wal/<system id>/keys/<epoch>/<key id>.json              epoch data key, wrapped per master key
    v1/wal/<system id>/history/<TLI>.history                   timeline history files
    v1/wal/<system id>/<TLI>/<TLI+LOG>/<segment>               full segments
    v1/wal/<system id>/<TLI>/<TLI+LOG>/<segment>.<off>.backup  backup history files
    v1/wal/<system id>/<TLI>/<TLI+LOG>/<segment>.partial.<stamp>-<hex>  partial segments (several allowed)

The system id is in the path, so a segment of another cluster can never be filed under ours, and a
``pg_upgrade`` or a new cluster gets a namespace of its own. Each WAL file is one immutable object,
published with no-overwrite (link(2) locally, ``If-None-Match: *`` on S3): a normal push is one PUT.
When the name exists, the stored header is authenticated and the stored body (authenticated chunk by chunk;
for a record of seedvault 0.1, its keyed content MAC) compared with the local file: equal is a duplicate (exit
0, as PostgreSQL's contract wants for a retried push), different is refused loudly and the stored object is
left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import seedvault
from seedvault import faults, storagecost
from seedvault.crypto.keys import constant_time_equal, new_data_key
from seedvault.errors import (
    AuthenticationFailed,
    ChecksumMismatch,
    ForeignWal,
    FormatError,
    ObjectExists,
    ObjectNotFound,
    SeedvaultError,
)
from seedvault.format import layout
from seedvault.format.fields import Fields, corrupted, load_json
from seedvault.repository import Repository
from seedvault.sources.postgres.wal import epochs, record
from seedvault.sources.postgres.wal import names as wn

EPOCH_MAX_AGE = timedelta(hours=24)
WAL_ZSTD_LEVEL = 1  # WAL compresses well at level 1; a push must keep up with the server
HEAD_READ = 8192


@dataclass(frozen=True)
class PushResult:
    name: str
    key: str
    result: str  # stored | duplicate
    raw_size: int
    stored_size: int
    seconds: float


@dataclass(frozen=True)
class WalObject:
    """A catalog entry (from a listing, not yet authenticated)."""

    key: str
    name: str
    kind: str
    timeline: int
    segment: str | None
    size: int
    modified: datetime


# Cached epochs whose key object this process has seen in storage: (url, repository id, system, epoch, key id).
_CONFIRMED_EPOCHS: set[tuple[str, str, str, str, str]] = set()


class WalStore:
    """WAL objects of one system id in one repository."""

    def __init__(self, repo: Repository, system_id: str | int, *, state_dir: str | None = None) -> None:
        self.repo = repo
        self.system_id = str(system_id)
        if not self.system_id.isdigit():
            raise FormatError(f"invalid system identifier {self.system_id!r}")
        self.prefix = layout.wal_prefix(self.system_id)
        self.state_dir = Path(state_dir) if state_dir else None
        self._epochs: dict[str, bytes] = {}
        self._current: str | None = None
        self._epoch_lock = threading.Lock()

    # --- keys of records -------------------------------------------------------------------------
    def object_key(self, name: wn.WalName, *, unique: str | None = None) -> str:
        if name.kind == "history":
            return layout.wal_history_path(self.system_id, name.name)
        assert name.segment is not None
        base = layout.wal_segment_dir(self.system_id, name.timeline, name.segment)
        if name.kind == "partial":
            return f"{base}{name.name}.{unique or _unique()}"
        return base + name.name

    def epoch_key(self, epoch: str) -> bytes:
        """Unwrap an epoch's data key with the configured master key (cached per process)."""
        if epoch in self._epochs:
            return self._epochs[epoch]
        if not layout.is_backup_id(epoch):
            raise AuthenticationFailed(f"WAL record names an invalid key epoch {epoch!r}")
        key = epochs.read_epoch_key(self.repo, self.system_id, epoch, self.repo.master)  # the one reader
        self._epochs[epoch] = key
        return key

    def _unwrap(self, rec: dict[str, Any], epoch: str) -> bytes:
        return epochs.unwrap_record(rec, self.system_id, epoch, self.repo.master)

    def current_epoch(self) -> tuple[str, bytes]:
        """The epoch new records are sealed with: reused for a day, cached (wrapped) in state_dir."""
        with self._epoch_lock:
            return self._current_epoch()

    def _current_epoch(self) -> tuple[str, bytes]:
        if self._current and _epoch_young(self._current):  # a long-running archiver rotates daily too
            return self._current, self._epochs[self._current]
        self._current = None
        master = self.repo.master
        # The repository is part of the name, by its id (not its URL: a repository re-created at the same
        # URL is another repository): an epoch key cached for one repository does not exist in another, and
        # sealing with it there would archive WAL that can never be read back.
        repo_id = str(self.repo.config(create=True)["id"])
        where = hashlib.sha256(repo_id.encode()).hexdigest()[:12]
        name = f"wal-epoch-{self.system_id}-{master.key_id}-{where}.json"
        cache = self.state_dir / name if self.state_dir else None
        cached = self._read_cache(cache) if cache is not None else None
        if cached is not None and not self._key_object_exists(repo_id, cached[0], master.key_id):
            cached = None  # its key object is gone (deleted, retired...): never seal with it
        if cached is not None:
            epoch, key = cached
            self._epochs[epoch] = key
            self._current = epoch
            return epoch, key
        found = self._reuse_epoch(master.key_id)  # no (valid) cache: one LIST rather than a new key
        if found is not None:
            epoch, key = found
            self._epochs[epoch] = key
            self._current = epoch
            if cache is not None:
                with contextlib.suppress(OSError, ObjectNotFound):
                    raw = self.repo.storage.get_bytes(epochs.epoch_key_path(self.system_id, epoch, master.key_id))
                    _write_private(cache, json.dumps({"epoch": epoch, "record": json.loads(raw)}))
            return epoch, key
        epoch = layout.new_backup_id()
        key = new_data_key()
        self.repo.check_kdf_pinned(master)  # never wrap a new epoch key under a key from a rewritten config
        rec = epochs.write_epoch_key(self.repo, self.system_id, epoch, key, master)
        self._epochs[epoch] = key
        self._current = epoch
        if cache is not None:
            with contextlib.suppress(OSError):
                _write_private(cache, json.dumps({"epoch": epoch, "record": rec}))
        return epoch, key

    def _key_object_exists(self, repo_id: str, epoch: str, key_id: str) -> bool:
        """Whether the cached epoch's key object is in storage: asked once per process per epoch and key."""
        seen = (str(self.repo.storage.url), repo_id, self.system_id, epoch, key_id)
        if seen in _CONFIRMED_EPOCHS:
            return True
        if not self.repo.storage.exists(epochs.epoch_key_path(self.system_id, epoch, key_id)):
            return False
        _CONFIRMED_EPOCHS.add(seen)
        return True

    def _read_cache(self, cache: Path) -> tuple[str, bytes] | None:
        """The young epoch cached in ``state_dir`` and its key, or None when absent, old or unusable in any way.

        The cache only spares a listing: whatever is wrong with it (unreadable, not JSON, another shape, a key
        object that does not open) makes the caller look the epoch up in the repository instead.
        """
        try:
            data = cache.read_bytes()
        except OSError:
            return None
        fail = corrupted(f"cached WAL epoch {cache}", FormatError)
        with contextlib.suppress(SeedvaultError):
            cached = Fields(load_json(data, fail), fail)
            epoch = cached.text("epoch", pattern=layout.BACKUP_ID_RE)
            assert epoch is not None
            if _epoch_young(epoch):
                return epoch, self._unwrap(epochs.checked_record(cached.raw("record"), self.system_id, epoch), epoch)
        return None

    def _reuse_epoch(self, key_id: str) -> tuple[str, bytes] | None:
        """The newest young epoch already wrapped for ``key_id``, so cache-less pushes share one key."""
        wraps = epochs.epoch_wraps(self.repo, self.system_id)
        # Only epochs wrapped for this key alone: one re-wrapped by a rotation was born under the old key,
        # and new WAL must not be sealed with a key that the retired (maybe leaked) master key opens.
        young = [e for e, ids in wraps.items() if ids == {key_id} and _epoch_young(e)]
        for epoch in sorted(young, reverse=True)[:1]:
            with contextlib.suppress(ObjectNotFound, AuthenticationFailed, FormatError):
                return epoch, epochs.read_epoch_key(self.repo, self.system_id, epoch, self.repo.master)
        return None

    # --- push ------------------------------------------------------------------------------------
    def push(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        source: str = "archive_command",
        pg_major: int | None = None,
        settings_level: int | None = None,
        chunk_size: int = 1 << 20,
        fileobj: BinaryIO | None = None,
    ) -> PushResult:
        """Archive one WAL file; returns only once it is durable in storage (or proven already there).

        ``fileobj`` (seekable, positioned anywhere) replaces opening ``path``: the archiver daemon reads the
        descriptor wal-push handed it, so it archives exactly the file PostgreSQL named, whatever its cwd.
        Safe to call from several threads at once.
        """
        t0 = time.perf_counter()
        path = Path(path)
        wal = wn.classify(name or path.name)
        opened = contextlib.nullcontext(fileobj) if fileobj is not None else open(path, "rb")  # noqa: SIM115
        with opened as fh:
            head = fh.read(64)
            seg_size = None
            segno = None
            if wal.kind in ("segment", "partial"):
                hdr = wn.check_segment_header(head, wal, system_id=int(self.system_id), pg_major=pg_major)
                seg_size = hdr.seg_size
                segno = wal.segno(seg_size)
                pg_major = pg_major or wn.major_of_magic(hdr.magic)
            key = self.object_key(wal)
            epoch, ek = self.current_epoch()
            size = os.fstat(fh.fileno()).st_size
            header: dict[str, Any] = {
                "format": record.FORMAT,
                "version": record.VERSION,
                "name": wal.name,
                "kind": wal.kind,
                "system_id": self.system_id,
                "timeline": wal.timeline,
                "segno": segno,
                "pg_major": pg_major,
                "wal_segment_size": seg_size,
                "raw_size": size,
                "epoch": epoch,
                "compression": "zstd",
                "chunk_size": chunk_size,
                "source": source,
                "archived": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "tool": f"seedvault {seedvault.__version__}",
            }
            fh.seek(0)
            # Class and Object Lock from the settings' storage_class.wal / object_lock (seedvault.storagecost).
            writer = self.repo.storage.open_write(key, options=storagecost.policy_of(self.repo.storage).wal())
            try:
                stored = record.write_record(
                    writer,
                    fh,
                    epoch_key=ek,
                    object_key=key,
                    header=header,
                    level=settings_level if settings_level is not None else WAL_ZSTD_LEVEL,
                    chunk_size=chunk_size,
                )
            except BaseException:
                writer.abort()
                raise
            faults.reached("wal-push-uploaded")
            try:
                writer.commit()
                result = "stored"
                faults.reached("wal-push-committed")
            except ObjectExists:
                self._same_content(key, wal, fh)
                result = "duplicate"
        return PushResult(wal.name, key, result, size, stored, time.perf_counter() - t0)

    def _same_content(self, key: str, wal: wn.WalName, fh: BinaryIO) -> None:
        """The name exists: succeed if the stored record holds exactly these bytes, else refuse loudly.

        Rare (a push retried after a crash, or a daemon's push repeated by the direct path), so it pays a
        download: the stored body is authenticated and compared with the local file piece by piece.
        """
        what = f"WAL file {wal.name}"
        with self.repo.storage.open_read(key) as stored:
            header, raw = record.read_header_unverified(stored, key)
            ek = self.epoch_key(str(header.get("epoch")))
            record.verify_header(raw, ek, key, what)
            fh.seek(0)
            size = os.fstat(fh.fileno()).st_size
            if size == header.get("raw_size") and header.get("content_mac"):  # a record of seedvault < 0.2
                mac, size = record.content_mac(ek, key, fh)
                same = constant_time_equal(mac.encode(), str(header["content_mac"]).encode())
            else:
                same = size == header.get("raw_size") and record.same_plaintext(
                    record.open_body(stored, ek, key, header, what), fh
                )
        if not same:
            raise ObjectExists(
                f"WAL file {wal.name} is already archived with different content "
                f"(stored {header.get('archived')} by {header.get('source')}); seedvault never overwrites it",
                hint="two servers archive to one repository (split brain), or a standby was promoted without a "
                "new timeline; stop one of them",
            )

    # --- fetch -----------------------------------------------------------------------------------
    def fetch(
        self, name: str, dest: str | os.PathLike[str], *, key: str | None = None, partial: bool = True
    ) -> dict[str, Any]:
        """Verify one archived WAL file completely, then place it at ``dest`` (atomically, fsynced).

        Raises ``ObjectNotFound`` when it is not archived. Nothing reaches ``dest`` unless every check
        passed: header MAC, name/system/timeline, every chunk, size, content MAC and the page header.

        A segment that was never archived whole but was streamed by ``wal-receive`` is served from its
        newest partial copy (``partial``; the returned header then has ``"served_partial": True``): that
        is the end of the archive, and recovery replays up to the last WAL the receiver got.
        """
        wal = wn.classify(name)
        if key is None and partial and wal.kind == "segment":
            try:
                return self.fetch(name, dest, key=self.object_key(wal), partial=False)
            except ObjectNotFound:
                try:
                    header = self.fetch(name + ".partial", dest)
                except ObjectNotFound:
                    raise ObjectNotFound(f"WAL file {name} is not archived") from None
                header = dict(header, served_partial=True)
                return header
        if key is None:
            key = self.object_key(wal) if wal.kind != "partial" else self._newest_partial(wal)
        dest = Path(dest)
        what = f"WAL file {wal.name} (system {self.system_id})"
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".seedvault-tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, self.repo.storage.open_read(key) as stored:
                header, raw = record.read_header_unverified(stored, what)
                ek = self.epoch_key(str(header.get("epoch")))
                record.verify_header(raw, ek, key, what)
                if header.get("version") != record.VERSION:
                    raise FormatError(f"{what}: unknown WAL record version {header.get('version')!r}")
                if (
                    header.get("name") != wal.name
                    or header.get("kind") != wal.kind
                    or header.get("system_id") != self.system_id
                    or header.get("timeline") != wal.timeline
                ):
                    raise ForeignWal(
                        f"{what}: the record holds {header.get('name')} of system {header.get('system_id')}"
                    )
                # Records of seedvault < 0.2 carry a keyed content MAC too; the chunk tags cover the rest.
                legacy = "content_mac" in header
                mac = hmac.new(record.content_key(ek, key), digestmod=hashlib.sha256) if legacy else None
                size = 0
                first = b""
                for piece in record.open_body(stored, ek, key, header, what):
                    if len(first) < 64:
                        first += piece[: 64 - len(first)]
                    if mac is not None:
                        mac.update(piece)
                    size += len(piece)
                    out.write(piece)
                if size != header.get("raw_size") or (
                    mac is not None
                    and not constant_time_equal(mac.hexdigest().encode(), str(header.get("content_mac")).encode())
                ):
                    raise ChecksumMismatch(f"{what}: content does not match its record")
                if wal.kind in ("segment", "partial"):
                    wn.check_segment_header(
                        first, wal, system_id=int(self.system_id), seg_size=header.get("wal_segment_size")
                    )
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return header

    def partial_prefix(self, wal: wn.WalName) -> str:
        """The key prefix of every stored copy of one partial segment (each push adds a unique suffix)."""
        assert wal.kind == "partial" and wal.segment is not None
        return f"{layout.wal_segment_dir(self.system_id, wal.timeline, wal.segment)}{wal.name}."

    def _newest_partial(self, wal: wn.WalName) -> str:
        found = list(self.repo.storage.list(self.partial_prefix(wal)))
        if not found:
            raise ObjectNotFound(f"WAL file {wal.name} is not archived")
        return max(found, key=lambda o: o.key.rsplit(".", 1)[1]).key

    # --- catalog ---------------------------------------------------------------------------------
    def list(self, timeline: int | None = None) -> list[WalObject]:
        """Archived WAL files (segments, partials, backup files) of one timeline or all, plus histories."""
        out: list[WalObject] = []
        prefix = self.prefix if timeline is None else f"{self.prefix}{timeline:08X}/"
        for info in self.repo.storage.list(prefix):
            rel = info.key[len(self.prefix) :]
            if rel.startswith("keys/"):
                continue
            base = rel.rsplit("/", 1)[-1]
            if rel.startswith("history/"):
                text = base
            elif ".partial." in base:
                text = base.split(".partial.")[0] + ".partial"
            else:
                text = base
            try:
                wal = wn.classify(text)
            except Exception:
                continue
            out.append(WalObject(info.key, wal.name, wal.kind, wal.timeline, wal.segment, info.size, info.modified))
        if timeline is not None:
            out += [o for o in self.list_histories()]
        return out

    def list_histories(self) -> list[WalObject]:
        out = []
        for info in self.repo.storage.list(f"{self.prefix}history/"):
            base = info.key.rsplit("/", 1)[-1]
            with contextlib.suppress(Exception):
                wal = wn.classify(base)
                out.append(WalObject(info.key, wal.name, "history", wal.timeline, None, info.size, info.modified))
        return out

    def read_history(self, tli: int) -> str:
        """The authenticated text of ``<tli>.history``."""
        name = f"{tli:08X}.history"
        with tempfile.TemporaryDirectory(prefix="seedvault-history-") as d:
            self.fetch(name, Path(d) / name)
            return (Path(d) / name).read_text()

    def read_header(self, key: str) -> dict[str, Any]:
        """The authenticated header of one record (reads only its first bytes)."""
        with self.repo.storage.open_read(key) as stored:
            header, raw = record.read_header_unverified(stored, key)
        record.verify_header(raw, self.epoch_key(str(header.get("epoch"))), key, key)
        return header


def partial_note(name: str, header: dict[str, Any]) -> str:
    """What the server log says when recovery gets a streamed partial segment instead of a whole one."""
    return (
        f"{name} was never archived whole: serving its partial copy streamed by wal-receive at "
        f"{header.get('archived')}; recovery ends inside this segment"
    )


def system_ids(repo: Repository) -> list[str]:
    """System ids that have WAL in this repository."""
    seen: set[str] = set()
    root = layout.WAL
    for info in repo.storage.list(root):
        sid = info.key[len(root) :].split("/", 1)[0]
        if sid.isdigit():
            seen.add(sid)
    return sorted(seen)


def _unique() -> str:
    # Microseconds: a reader takes the greatest stamp as the newest partial, so pushes within one second
    # (wal-receive uploads the segment in progress every few seconds) must still sort by time.
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def _epoch_young(epoch: str) -> bool:
    try:
        started = datetime.strptime(epoch[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return False
    return datetime.now(UTC) - started < EPOCH_MAX_AGE


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a 0600 file; on any failure (a full disk) no temporary file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
