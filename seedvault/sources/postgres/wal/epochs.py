"""WAL epoch key objects (FORMAT.md 8.2): their keys, listing, wrapping and unwrapping, under any master key.

The one implementation for :class:`~seedvault.sources.postgres.wal.store.WalStore` (which seals new records with the
current epoch, under the configured master key) and for ``key rotate``/``key retire`` (:mod:`seedvault.ops.keys`),
which work on every system id of a repository and with master keys other than the configured one::

    v1/wal/<system id>/keys/<epoch>/<key id>.json    the epoch key wrapped with scope wal/<system id>/<epoch>
"""

from __future__ import annotations

import json
from typing import Any

from seedvault.crypto.keys import MasterKey
from seedvault.errors import AuthenticationFailed, FormatError, ObjectNotFound, UnsupportedVersion
from seedvault.format import layout
from seedvault.format.fields import Fail, Fields, corrupted, is_int, load_json, short
from seedvault.repository import Repository

KEY_FORMAT = "seedvault-wal-key"


def epoch_key_path(system_id: str, epoch: str, key_id: str) -> str:
    return layout.wal_epoch_key_path(system_id, epoch, key_id)


def scope(system_id: str, epoch: str) -> str:
    """The 'backup id' an epoch key is wrapped for (FORMAT.md 8.2)."""
    return f"wal/{system_id}/{epoch}"


def epoch_wraps(repo: Repository, system_id: str) -> dict[str, set[str]]:
    """Epoch id -> ids of the master keys it is wrapped for, from one listing; other names are ignored."""
    prefix = layout.wal_keys_prefix(system_id)
    out: dict[str, set[str]] = {}
    for info in repo.storage.list(prefix):
        epoch, _, name = info.key[len(prefix) :].partition("/")
        key_id = name.removesuffix(".json")
        if layout.is_backup_id(epoch) and name.endswith(".json") and layout.KEY_ID_RE.match(key_id):
            out.setdefault(epoch, set()).add(key_id)
    return dict(sorted(out.items()))


def read_epoch_key(repo: Repository, system_id: str, epoch: str, master: MasterKey) -> bytes:
    """Unwrap one epoch's key with ``master``; raises AuthenticationFailed when it has no (valid) object for it."""
    try:
        data = repo.storage.get_bytes(epoch_key_path(system_id, epoch, master.key_id))
    except ObjectNotFound:
        raise AuthenticationFailed(
            f"WAL key epoch {epoch} of system {system_id} has no key object for master key {master.key_id}",
            hint="the WAL was archived under another master key, or its key object was removed",
        ) from None
    return unwrap_record(parse_record(data, system_id, epoch), system_id, epoch, master)


def parse_record(data: bytes, system_id: str, epoch: str) -> dict[str, Any]:
    """The checked key object of an epoch from its stored bytes (any malformed bytes: a catalogued error)."""
    return checked_record(load_json(data, _corrupted(system_id, epoch)), system_id, epoch)


def _corrupted(system_id: str, epoch: str) -> Fail:
    return corrupted(f"WAL key object of epoch {epoch} of system {system_id}", AuthenticationFailed)


def checked_record(rec: object, system_id: str, epoch: str) -> dict[str, Any]:
    """``rec`` if it is a key object of the known format (FORMAT.md 8.2), its fields of the right types.

    Not JSON, not an object or a field of the wrong type: AuthenticationFailed (corrupted); another
    ``format``: FormatError; another ``version``: UnsupportedVersion. Its wrapping is checked when unwrapped.
    """
    fail = _corrupted(system_id, epoch)
    fields = Fields(rec, fail)
    if fields.raw("format", optional=True) != KEY_FORMAT:
        raise FormatError(f"WAL key object of epoch {epoch} of system {system_id} has an unknown format")
    version = fields.raw("version", optional=True)
    if not is_int(version) or version != 1:
        raise UnsupportedVersion(
            f"WAL key object of epoch {epoch} of system {system_id} has format version {short(version)}; "
            "this seedvault reads version 1",
            hint="upgrade seedvault",
        )
    fields.text("epoch", pattern=layout.BACKUP_ID_RE)
    fields.text("key_id", pattern=layout.KEY_ID_RE)
    fields.text("cipher", max_len=64)
    return fields.data


def unwrap_record(rec: dict[str, Any], system_id: str, epoch: str, master: MasterKey) -> bytes:
    """The epoch key of a parsed key object (AuthenticationFailed/WrongKey when ``master`` does not open it)."""
    return master.unwrap(rec, scope(system_id, epoch))


def write_epoch_key(
    repo: Repository, system_id: str, epoch: str, epoch_key: bytes, master: MasterKey
) -> dict[str, Any]:
    """Store the epoch key wrapped under ``master`` (no overwrite: ObjectExists when that object is there)."""
    rec = {"format": KEY_FORMAT, "version": 1, "epoch": epoch, "key_id": master.key_id, "cipher": "aes-256-gcm"}
    rec.update(master.wrap(epoch_key, scope(system_id, epoch)))
    repo.storage.put_bytes(epoch_key_path(system_id, epoch, master.key_id), json.dumps(rec, indent=2).encode())
    return rec
