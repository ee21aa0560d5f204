"""The repository: the only module that knows layout, crypto and storage together.

Ordering rules (FORMAT.md "Write and read ordering"):

* write: key object -> data objects -> manifest (the commit marker) last, never overwriting anything;
* delete: manifest first (the backup stops being complete), then data objects, then key objects;
* read: manifest authenticated before any data byte is released; each chunk authenticated before its
  plaintext leaves; the stored bytes' SHA-256 and size checked against the manifest at the end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from seedvault import faults
from seedvault.crypto.keys import KeySource, MasterKey, new_kdf_params, scrypt_params, wrong_key
from seedvault.errors import (
    AuthenticationFailed,
    BackupNotFound,
    ChecksumMismatch,
    ConfigError,
    FormatError,
    IntegrityError,
    KeyMissing,
    ObjectExists,
    ObjectNotFound,
    SeedvaultError,
    UnsupportedVersion,
    WrongKey,
)
from seedvault.format import layout
from seedvault.format import manifest as mf
from seedvault.format.chunk import open_chunks
from seedvault.format.fields import Fields, corrupted, is_int, load_json, short
from seedvault.storage.base import Storage
from seedvault.stream.compress import decompress
from seedvault.stream.prefetch import prefetch

if TYPE_CHECKING:
    from seedvault.writer import BackupWriter

REPO_FORMAT = "seedvault-repository"
REPO_VERSION = 1
KEY_FORMAT = "seedvault-key"


@dataclass
class BackupEntry:
    """One backup as seen by ``list``: its authenticated manifest body, or why it is not usable."""

    backup_id: str
    body: dict | None
    problem: str | None = None
    verified: bool = False


class _HashingReader:
    """Counts and hashes the stored bytes as the chunk reader consumes them."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


class Repository:
    """A seedvault repository on some storage, with an optional master key source."""

    def __init__(self, storage: Storage, key_source: KeySource | None = None) -> None:
        self.storage = storage
        self.key_source = key_source
        self._config: dict | None = None
        self._master: MasterKey | None = None

    # --- configuration ---------------------------------------------------------------------------
    def config(self, *, create: bool = False, kdf: dict | None = None) -> dict:
        """The repository config; created atomically (no-overwrite) on first write when ``create``.

        ``kdf``: the key-derivation parameters of a new config (a replica takes its source's, so that one
        passphrase derives the same master key in both); default: fresh ones.
        """
        if self._config is not None:
            return self._config
        try:
            data = self.storage.get_bytes(layout.CONFIG)
        except ObjectNotFound:
            if not create:
                raise ConfigError(
                    f"no seedvault repository at {self.storage.url}",
                    hint="check SEEDVAULT_REPOSITORY, or run 'seedvault init'",
                ) from None
            data = self._create_config(kdf)
        self._config = self._parse_config(data)
        return self._config

    def _create_config(self, kdf: dict | None = None) -> bytes:
        import uuid

        body = {
            "format": REPO_FORMAT,
            "version": REPO_VERSION,
            "id": str(uuid.uuid4()),
            "created": _now(),
            "kdf": kdf or new_kdf_params(),
        }
        data = json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"
        try:
            self.storage.put_bytes(layout.CONFIG, data)
        except ObjectExists:  # another writer initialised it first: use theirs
            data = self.storage.get_bytes(layout.CONFIG)
        return data

    def _parse_config(self, data: bytes) -> dict:
        """The checked config (FORMAT.md section 3): any malformed bytes are FormatError, never a TypeError."""
        fail = corrupted(f"repository config at {self.storage.url}", FormatError)
        config = Fields(load_json(data, fail), fail)
        fmt, version = config.raw("format"), config.raw("version")
        if fmt != REPO_FORMAT:
            raise FormatError(f"{self.storage.url} holds {short(fmt)}, not a seedvault repository")
        if not is_int(version):
            raise fail(f"field 'version' is {short(version)}, not an integer")
        if version != REPO_VERSION:
            raise UnsupportedVersion(
                f"repository at {self.storage.url} has format version {version}; "
                f"this seedvault reads version {REPO_VERSION}",
                hint="upgrade seedvault",
            )
        config.text("id", max_len=64)
        config.text("created", max_len=64)
        kdf = config.obj("kdf")
        assert kdf is not None
        if kdf.raw("name") == "scrypt":  # another KDF is refused only when a passphrase needs it
            scrypt_params(kdf.data, fail)
        return config.data

    # --- keys -----------------------------------------------------------------------------------------
    @property
    def master(self) -> MasterKey:
        if self._master is None:
            if self.key_source is None:
                raise KeyMissing(
                    "no master key configured",
                    hint="set SEEDVAULT_KEY_FILE or SEEDVAULT_PASSPHRASE_FILE",
                )
            self._master = self.key_source.resolve(self.config().get("kdf"))
        return self._master

    def check_kdf_pinned(self, master: MasterKey, *, new_key: bool = False) -> None:
        """Refuse a passphrase key when the config's KDF parameters are not the ones backups were made with.

        The config is not authenticated (FORMAT.md section 3), but it is written once and never changes, and
        each manifest records the KDF parameters its passphrase key was derived with (``key.kdf``). So the
        newest passphrase-keyed manifest must record exactly the config's parameters, and ``master`` must
        open it (its authenticated body is what is compared): a rewritten config derives another key, which
        opens nothing. Called before a new data or epoch key is wrapped. A ``new_key`` (``key rotate``) has no
        key objects yet: only the stored record is compared for it (the current key is checked as well).
        """
        if master.kind != "passphrase":
            return
        kdf = self.config().get("kdf")
        for bid in reversed(self.backup_ids()):
            try:
                body, _ = mf.parse(self.storage.get_bytes(layout.manifest_key(bid)), bid)
            except SeedvaultError:  # deleted meanwhile, or damaged: verify reports it; look further back
                continue
            key = body.get("key") or {}
            if key.get("kind") != "passphrase" or key.get("kdf") is None:
                continue
            mismatch = IntegrityError(
                f"the key-derivation parameters in the repository config at {self.storage.url} differ from "
                f"those backup {bid} was made with: the config may have been tampered with",
                hint="compare v1/repository.json with the backup's manifest (key.kdf) before writing again",
            )
            if key.get("kdf") != kdf:  # as stored: the plain sign of a rewritten config
                raise mismatch
            if new_key:
                return
            if master.key_id not in self.key_ids(bid):
                raise WrongKey(
                    f"the passphrase does not open backup {bid}, the newest made with a passphrase, under the "
                    f"key-derivation parameters of the repository config at {self.storage.url}: the passphrase "
                    "is not this repository's, or the config (and that manifest) were tampered with",
                    hint="use the repository's passphrase; add a new one with 'seedvault key rotate' first",
                )
            if self.manifest(bid, self.data_key(bid, master))["key"].get("kdf") != kdf:  # authenticated
                raise mismatch
            return

    def resolve_key(self, source: KeySource) -> MasterKey:
        return source.resolve(self.config().get("kdf"))

    def key_ids(self, backup_id: str) -> list[str]:
        prefix = layout.keys_prefix(backup_id)
        return sorted(o.key[len(prefix) :].removesuffix(".json") for o in self.storage.list(prefix))

    def write_key_object(self, backup_id: str, data_key: bytes, master: MasterKey) -> None:
        record = {
            "format": KEY_FORMAT,
            "version": 1,
            "backup_id": backup_id,
            "key_id": master.key_id,
            "cipher": "aes-256-gcm",
            **master.wrap(data_key, backup_id),
        }
        data = json.dumps(record, sort_keys=True, indent=2).encode() + b"\n"
        self.storage.put_bytes(layout.key_object(backup_id, master.key_id), data)

    def data_key(self, backup_id: str, master: MasterKey | None = None) -> bytes:
        """Unwrap the backup's data key with ``master`` (default: the configured key)."""
        if not layout.is_backup_id(backup_id):
            raise BackupNotFound(f"{backup_id!r} is not a backup id", hint="'seedvault list' shows backup ids")
        master = master or self.master
        try:
            data = self.storage.get_bytes(layout.key_object(backup_id, master.key_id))
        except ObjectNotFound:
            available = self.key_ids(backup_id)
            if not available:
                self._require_manifest(backup_id)
                raise AuthenticationFailed(f"backup {backup_id} has no key object left") from None
            raise wrong_key(backup_id, master.key_id, available) from None
        fail = corrupted(f"key object of backup {backup_id}", AuthenticationFailed)
        record = Fields(load_json(data, fail), fail)
        version = record.raw("version", optional=True)
        if record.raw("format", optional=True) != KEY_FORMAT or not is_int(version) or version != 1:
            raise UnsupportedVersion(f"key object of backup {backup_id} has an unknown format or version")
        record.text("backup_id", max_len=256)
        record.text("key_id", pattern=layout.KEY_ID_RE)
        record.text("cipher", max_len=64)
        return master.unwrap(record.data, backup_id)

    # --- manifests and listing ---------------------------------------------------------------------
    def manifest(self, backup_id: str, data_key: bytes | None = None) -> dict:
        """The authenticated manifest body of a complete backup."""
        data = self._require_manifest(backup_id)
        mf.parse(data, backup_id)  # version checks come before any key work
        return mf.open_(data, data_key or self.data_key(backup_id), backup_id)

    def _require_manifest(self, backup_id: str) -> bytes:
        if not layout.is_backup_id(backup_id):
            raise BackupNotFound(f"{backup_id!r} is not a backup id", hint="'seedvault list' shows backup ids")
        try:
            return self.storage.get_bytes(layout.manifest_key(backup_id))
        except ObjectNotFound:
            raise BackupNotFound(
                f"backup {backup_id} not found (or not complete) in {self.storage.url}",
                hint="'seedvault list' shows the complete backups",
            ) from None

    def backup_ids(self) -> list[str]:
        """Ids of complete backups (those with a manifest), oldest first."""
        ids = []
        for info in self.storage.list(layout.BACKUPS):
            rest = info.key[len(layout.BACKUPS) :]
            bid, _, tail = rest.partition("/")
            if tail == layout.MANIFEST and layout.is_backup_id(bid):
                ids.append(bid)
        return sorted(ids)

    def entries(self, *, authenticate: bool = True) -> Iterator[BackupEntry]:
        """Every complete backup; with a key each manifest is authenticated, problems reported not raised.

        A problem of one backup (corrupted, wrong key, unsupported) is its entry's ``problem``; a master key that
        cannot be had at all (no key file, a directory, invalid base64) is raised, before anything is listed.
        """
        ids = self.backup_ids()
        if authenticate and ids:
            self.master  # noqa: B018 - resolved (or refused) once, for every backup
        for bid in ids:
            try:
                if authenticate:
                    yield BackupEntry(bid, self.manifest(bid), verified=True)
                else:
                    body, _ = mf.parse(self.storage.get_bytes(layout.manifest_key(bid)), bid)
                    yield BackupEntry(bid, body, verified=False)
            except BackupNotFound:
                continue  # deleted while listing
            except SeedvaultError as exc:  # report per backup (wrong key, corruption...), keep listing
                yield BackupEntry(bid, None, problem=exc.one_line())

    def newest(
        self, match: Callable[[dict], bool] | None = None, *, authenticate: bool = True
    ) -> tuple[BackupEntry | None, list[BackupEntry]]:
        """The latest backup: the newest readable one whose manifest body ``match``es (default: any).

        Also returns the unreadable backups newer than it (newest first), which were skipped: their body is
        unknown, so they can be neither matched nor restored, and one damaged backup must not hide every
        good one before it. Callers say what was skipped.
        """
        skipped: list[BackupEntry] = []
        for entry in reversed(list(self.entries(authenticate=authenticate))):
            if entry.body is None:
                skipped.append(entry)
            elif match is None or match(entry.body):
                return entry, skipped
        return None, skipped

    # --- reading objects -----------------------------------------------------------------------------
    def read_object(
        self,
        backup_id: str,
        name: str,
        *,
        body: dict | None = None,
        data_key: bytes | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[bytes]:
        """Yield the authenticated, decompressed bytes of one object; checks digest and size at the end."""
        data_key = data_key or self.data_key(backup_id)
        body = body or self.manifest(backup_id, data_key)
        entry = next((o for o in body["objects"] if o["name"] == name), None)
        if entry is None:
            raise ObjectNotFound(f"backup {backup_id} has no object {name!r}")
        what = f"object {name} of backup {backup_id}"
        raw = self.storage.open_read(layout.data_key(backup_id, name))
        with raw:
            hashing = _HashingReader(raw)
            plain = prefetch(open_chunks(hashing, data_key, backup_id, name))
            produced = 0
            for piece in decompress(body["compression"]["name"], plain, what):
                produced += len(piece)
                if progress:
                    progress(len(piece))
                yield piece
        if hashing.size != entry["stored_size"] or hashing.sha.hexdigest() != entry["sha256"]:
            raise ChecksumMismatch(f"{what}: stored bytes do not match the manifest's SHA-256/size")
        if produced != entry["raw_size"]:
            raise ChecksumMismatch(f"{what}: restored {produced} bytes, manifest says {entry['raw_size']}")

    # --- deleting ---------------------------------------------------------------------------------------
    def delete_backup(self, backup_id: str) -> None:
        """Manifest first (no longer complete), then data, then key objects."""
        self.storage.delete([layout.manifest_key(backup_id)])
        self.delete_leftovers(backup_id)

    def delete_leftovers(self, backup_id: str) -> None:
        data = [o.key for o in self.storage.list(layout.backup_prefix(backup_id))]
        self.storage.delete(data)
        self.storage.delete([o.key for o in self.storage.list(layout.keys_prefix(backup_id))])

    def begin(self, **kwargs: Any) -> BackupWriter:
        """Start writing a new backup (see :class:`seedvault.writer.BackupWriter`).

        Labels are checked first (UsageError naming the rule), before anything is written.
        """
        from seedvault.writer import BackupWriter

        if kwargs.get("labels") is not None:
            kwargs["labels"] = mf.check_labels(kwargs["labels"])
        faults.reached("backup-start")
        self.config(create=True)
        self.check_kdf_pinned(self.master)  # before a new data key is wrapped (FORMAT.md section 3)
        return BackupWriter(self, **kwargs)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
