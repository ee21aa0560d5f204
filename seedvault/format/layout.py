"""Every storage key the repository uses, in one place.

    v1/repository.json                          repository config: format version, id, KDF parameters
    v1/backups/<backup id>/data/<object name>   data objects (format.chunk)
    v1/backups/<backup id>/manifest.json        the commit marker, written last
    v1/keys/<backup id>/<key id>.json           the backup's data key wrapped under one master key
    v1/leases/<lease id>.json                   a running operation's lease (seedvault.leases)
    v1/audit/...                                the append-only, authenticated event log (seedvault.audit)
    v1/catalog/...                              the authenticated index of manifests (seedvault.catalog)
    v1/repokey/<key id>.json                    the repository secret wrapped under one master key (seedvault.repokey)
    v1/wal/<system id>/keys/<epoch>/<key id>.json   a WAL epoch key wrapped under one master key (FORMAT.md 8.2)
    v1/wal/<system id>/history/<TLI>.history        timeline history files
    v1/wal/<system id>/<TLI>/<TLI><LOG>/<file>      WAL segments, partial segments, backup history files (8.1)

Backup ids sort by time: ``20261125T020000Z-3f9a1c`` (UTC start time, then 6 random hex digits).
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

ROOT = "v1"
CONFIG = f"{ROOT}/repository.json"
BACKUPS = f"{ROOT}/backups/"
KEYS = f"{ROOT}/keys/"
LEASES = f"{ROOT}/leases/"
AUDIT = f"{ROOT}/audit/"
CATALOG = f"{ROOT}/catalog/"
WAL = f"{ROOT}/wal/"
MANIFEST = "manifest.json"

# Anchored with \A and \Z, never ^ and $: "$" also matches before a final newline, so "<id>\n" (a backup id
# pasted with its line end) passed as an id and failed later as an invalid storage name. Use fullmatch.
BACKUP_ID_RE = re.compile(r"\A\d{8}T\d{6}Z-[0-9a-f]{6}\Z")
OBJECT_NAME_RE = re.compile(r"\A[a-z0-9][a-z0-9._-]{0,127}\Z")
KEY_ID_RE = re.compile(r"\Ak-[0-9a-f]{16}\Z")


def new_backup_id(now: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-mmmrrr``: start time, its milliseconds as 3 hex digits, then 3 random ones.

    Why the milliseconds: ids sort by time, and "the newest backup" is the greatest id; with 6 random digits
    two backups started within one second (a FULL and its DIFF, a backup and a retry) sorted at random.
    """
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{now.microsecond // 1000:03x}{secrets.token_hex(2)[:3]}"


def is_backup_id(text: str) -> bool:
    return isinstance(text, str) and BACKUP_ID_RE.fullmatch(text) is not None


def backup_prefix(backup_id: str) -> str:
    return f"{BACKUPS}{backup_id}/"


def data_key(backup_id: str, name: str) -> str:
    return f"{BACKUPS}{backup_id}/data/{name}"


def manifest_key(backup_id: str) -> str:
    return f"{BACKUPS}{backup_id}/{MANIFEST}"


def keys_prefix(backup_id: str) -> str:
    return f"{KEYS}{backup_id}/"


def key_object(backup_id: str, key_id: str) -> str:
    return f"{KEYS}{backup_id}/{key_id}.json"


def backup_id_of(key: str) -> str | None:
    """The backup id a storage key belongs to (data, manifest or key object), if any."""
    for root in (BACKUPS, KEYS):
        if key.startswith(root):
            candidate = key[len(root) :].split("/", 1)[0]
            return candidate if is_backup_id(candidate) else None
    return None


# --- WAL (FORMAT.md section 8) ------------------------------------------------------------------------------
def wal_prefix(system_id: str) -> str:
    """Everything of one database system: ``v1/wal/<system id>/``."""
    return f"{WAL}{system_id}/"


def wal_keys_prefix(system_id: str) -> str:
    return f"{wal_prefix(system_id)}keys/"


def wal_epoch_key_path(system_id: str, epoch: str, key_id: str) -> str:
    return f"{wal_keys_prefix(system_id)}{epoch}/{key_id}.json"


def wal_history_path(system_id: str, name: str) -> str:
    return f"{wal_prefix(system_id)}history/{name}"


def wal_segment_dir(system_id: str, timeline: int, segment: str) -> str:
    """``v1/wal/<system id>/<TLI>/<TLI><LOG>/``: where a segment's records (and its partials) live."""
    return f"{wal_prefix(system_id)}{timeline:08X}/{segment[:16]}/"
