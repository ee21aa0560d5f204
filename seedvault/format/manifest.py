"""Manifests: the versioned, authenticated description of one backup, written last as its commit marker.

Stored form (``v1/backups/<id>/manifest.json``): the canonical JSON of ``{"body": {...}, "mac": "<hex>"}``.
Canonical JSON = UTF-8 of ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``;
bodies hold only strings, integers, booleans, null, lists and objects (no floats), so any language can
re-serialise them byte for byte. ``mac`` = HMAC-SHA256 over the canonical body with
``HKDF(data key, info="seedvault/v1/manifest\\0<backup id>")``. The MAC key comes from the data key, not
from the master key, so a key rotation (which only re-wraps data keys) never invalidates a manifest, and a
manifest copied to another backup's name does not authenticate there.
"""

from __future__ import annotations

import hmac
import json
import re
import unicodedata
from datetime import datetime
from hashlib import sha256
from typing import Any

from seedvault.crypto.keys import hkdf
from seedvault.errors import (
    AuthenticationFailed,
    FormatError,
    MandatoryFeatureUnsupported,
    UnsupportedVersion,
    UsageError,
)
from seedvault.format import layout
from seedvault.format.fields import Fields, corrupted, is_int, load_json, short

FORMAT = "seedvault-manifest"
VERSION = 1
# Features a reader must understand to restore a backup (borg's "mandatory features"); none yet.
KNOWN_FEATURES: frozenset[str] = frozenset()
COMPRESSIONS = ("zstd", "none")  # seedvault.stream.compress.NAMES


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _mac(body: dict, data_key: bytes, backup_id: str) -> str:
    key = hkdf(data_key, b"seedvault/v1/manifest\x00" + backup_id.encode())
    return hmac.new(key, canonical(body), sha256).hexdigest()


def seal(body: dict, data_key: bytes) -> bytes:
    _reject_floats(body)
    return canonical({"body": body, "mac": _mac(body, data_key, body["id"])})


def parse(data: bytes, backup_id: str) -> tuple[dict, str]:
    """Parse and check the format version, without authentication (for listing with no key).

    Any stored bytes give either a body whose every field has its FORMAT.md type, or a catalogued error:
    corrupted (not JSON, wrong shapes, missing fields) is AuthenticationFailed, as a bit flip would be.
    """
    fail = corrupted(f"manifest of backup {backup_id}", AuthenticationFailed)
    outer = Fields(load_json(data, fail), fail)
    body = outer.obj("body")
    mac = outer.text("mac", max_len=128)
    assert body is not None and mac is not None
    fmt, version = body.raw("format"), body.raw("version")
    if fmt != FORMAT:
        raise FormatError(f"manifest of backup {backup_id} has unknown format {short(fmt)}")
    if not is_int(version):
        raise fail(f"field 'body.version' is {short(version)}, not an integer")
    if version != VERSION:
        raise UnsupportedVersion(
            f"manifest of backup {backup_id} has format version {version}; this seedvault reads version {VERSION}",
            hint="upgrade seedvault",
        )
    missing = set(body.texts("features")) - KNOWN_FEATURES
    if missing:
        names = sorted(missing)
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        raise MandatoryFeatureUnsupported(
            f"backup {backup_id} needs features this seedvault lacks: {', '.join(short(n) for n in names[:5])}{more}"
        )
    _check_body(body)
    return body.data, mac


HEX64 = re.compile(r"[0-9a-f]{64}")
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
LOCK_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
MIN_CHUNK, MAX_CHUNK = 1024, 16 * 1024 * 1024


def _check_body(body: Fields) -> None:
    """Every field a reader uses has its version-1 type (FORMAT.md section 5); unknown fields are left alone."""
    body.text("id", pattern=layout.BACKUP_ID_RE)
    body.text("kind", max_len=128)
    body.text_map("labels")
    body.obj("source")
    body.text("parent", nullable=True, pattern=layout.BACKUP_ID_RE)
    body.text("started", max_len=64)
    body.text("finished", max_len=64)
    body.obj("tool")
    body.text("cipher", max_len=64)
    body.int("chunk_size", lo=MIN_CHUNK, hi=MAX_CHUNK)
    compression = body.obj("compression")
    assert compression is not None
    compression.text("name", choices=COMPRESSIONS)
    compression.int("level", nullable=True, lo=-(2**31), hi=2**31)
    key = body.obj("key")
    assert key is not None
    key.text("key_id", pattern=layout.KEY_ID_RE)
    key.text("kind", max_len=64)
    key.obj("kdf", nullable=True)
    key.text("wrap", max_len=64)
    key.text("key_objects", max_len=1024)
    names: set[str] = set()
    for obj in body.objects("objects"):
        name = obj.text("name", pattern=layout.OBJECT_NAME_RE)
        assert name is not None
        if name in names:
            raise obj.fail(f"object {name} is listed twice")
        names.add(name)
        for size in ("raw_size", "compressed_size", "stored_size", "chunks"):
            obj.int(size)
        obj.text("sha256", pattern=HEX64)
    for size in ("raw_size", "compressed_size", "stored_size"):
        body.int(size)
    lock = body.obj("object_lock", optional=True, nullable=True)  # optional (FORMAT.md section 5)
    if lock is not None:
        lock.text("mode", choices=LOCK_MODES)
        until = lock.text("retain_until", pattern=LOCK_TIME)
        try:
            datetime.strptime(str(until), "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise lock.fail("field 'object_lock.retain_until' is not a valid time") from None


def open_(data: bytes, data_key: bytes, backup_id: str) -> dict:
    """Parse, check the version and authenticate a manifest stored under ``backup_id``."""
    body, mac = parse(data, backup_id)
    expected = _mac(body, data_key, backup_id)
    if not isinstance(mac, str) or not hmac.compare_digest(mac, expected):
        raise AuthenticationFailed(f"manifest of backup {backup_id} failed authentication (altered or moved)")
    if body.get("id") != backup_id:
        raise AuthenticationFailed(f"manifest stored as backup {backup_id} belongs to another backup")
    return body


LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
MAX_LABELS = 32
MAX_LABEL_VALUE = 256


def check_labels(labels: object) -> dict[str, str]:
    """Labels fit for a manifest, or a UsageError naming the rule they break (checked before a backup starts).

    Labels are shown by ``list`` and ``show``, matched by ``--label`` and may end up in file or database names
    chosen by operators' scripts, so: at most 32; names ``[a-z][a-z0-9_.-]{0,63}``; values 1 to 256 characters
    with no line break or other control character and no ``/`` or ``\\`` (nothing that reads as a path).
    """
    if not isinstance(labels, dict):
        raise UsageError("labels must be a mapping of names to values")
    if len(labels) > MAX_LABELS:
        raise UsageError(f"at most {MAX_LABELS} labels per backup, not {len(labels)}")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.fullmatch(key):
            raise UsageError(
                f"invalid label name {short(key)}: names are 1-64 characters of a-z, 0-9, '_', '.', '-', "
                "starting with a letter"
            )
        rule = (
            f"label {key}: values are 1-{MAX_LABEL_VALUE} characters without line breaks, control characters, "
            "'/' or '\\'"
        )
        if not isinstance(value, str):
            raise UsageError(f"{rule} (got {short(value)})")
        if not 1 <= len(value) <= MAX_LABEL_VALUE:
            raise UsageError(f"{rule} (got {len(value)} characters)")
        bad = next((c for c in value if c in "/\\" or unicodedata.category(c).startswith("C")), None)
        if bad is not None:
            raise UsageError(f"{rule} (got {bad!r} in {short(value)})")
    return dict(labels)


def without_floats(value: Any) -> Any:
    """``value`` made fit for a manifest: whole floats as integers, others as their ``repr`` string.

    Why: manifests are canonical JSON without floats, and values recorded from a database (a POINT index's
    ``spatial.cartesian.min: [-1000000.0, ...]``, an export summary) may hold them. Apply it to both sides of
    a comparison (recorded and live), so they compare equal.
    """
    if isinstance(value, float):
        return int(value) if value.is_integer() else repr(value)
    if isinstance(value, dict):
        return {k: without_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_floats(v) for v in value]
    return value


def _reject_floats(obj: Any) -> None:
    if isinstance(obj, float):
        raise FormatError("manifest values must not be floats (canonical JSON)")
    if isinstance(obj, dict):
        for value in obj.values():
            _reject_floats(value)
    elif isinstance(obj, list):
        for value in obj:
            _reject_floats(value)
