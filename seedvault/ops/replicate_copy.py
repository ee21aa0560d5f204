"""Copy one object to another repository and verify it there: the unit of replication.

Objects are copied byte for byte under the same key: data objects, manifests and WAL records are bound to
their backup id, name or storage key by their keys (FORMAT.md sections 4, 5, 8.3), so the copy authenticates
at the destination with the same master key, and a copy under any other key would not.

How: server-side (``S3Storage.copy_from``) when both repositories are S3 on one endpoint with the same
credentials, else streamed through this host in 1 MiB pieces into the destination's streaming writer (memory
is the writer's part buffers, whatever the object's size). Either way the destination's own write options
apply (storage class, Object Lock), and nothing is ever overwritten.

Verified on arrival: the copy is read back from the destination and checked by the caller's ``check`` (the
manifest's SHA-256 and size for data objects; the source's exact bytes for manifests and key objects; full
authentication for WAL records). A copy that fails is deleted and copied once more; a second failure is
:class:`~seedvault.errors.ChecksumMismatch`. Deleting is safe only because the callers copy before they
publish: nothing at the destination lists a backup whose manifest is not there yet, and a WAL record is
checked before anything relies on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from seedvault import faults
from seedvault.errors import ChecksumMismatch, IntegrityError, ObjectExists, ObjectNotFound, SeedvaultError
from seedvault.storage.base import Storage, WriteOptions

PIECE = 1024 * 1024
FAULT_ARRIVED = "replicate-object-arrived"  # a copy just landed (tests: corrupt it, or kill here)
FAULT_STREAMING = "replicate-object-streaming"  # the first piece of a streamed copy was written

# Reads the copy at the destination; returns None when it is right, else what is wrong (one line).
Check = Callable[[Storage, str], "str | None"]


@dataclass(frozen=True)
class Copied:
    key: str
    size: int
    how: str  # "server-side" | "streamed" | "present" (found at the destination already, and checked)
    retried: bool = False


def digest(storage: Storage, key: str) -> tuple[int, str]:
    """(size, SHA-256 hex) of the stored bytes, streamed."""
    sha = hashlib.sha256()
    size = 0
    with storage.open_read(key) as fh:
        while piece := fh.read(PIECE):
            sha.update(piece)
            size += len(piece)
    return size, sha.hexdigest()


def same_digest(size: int, sha256: str) -> Check:
    """The check for data objects: the manifest's size and SHA-256 of the stored bytes."""

    def check(storage: Storage, key: str) -> str | None:
        got_size, got_sha = digest(storage, key)
        if got_size != size:
            return f"{got_size} bytes where the manifest says {size}"
        if got_sha != sha256:
            return "its SHA-256 differs from the manifest's"
        return None

    return check


def same_bytes(expected: bytes) -> Check:
    """The check for small objects read whole from the source (manifests, key objects)."""

    def check(storage: Storage, key: str) -> str | None:
        return None if storage.get_bytes(key) == expected else "its bytes differ from the source's"

    return check


def copy_verified(
    src: Storage,
    dst: Storage,
    key: str,
    *,
    size: int,
    check: Check,
    options: WriteOptions | None = None,
    data: bytes | None = None,
    replace_existing: bool = False,
) -> Copied:
    """Make ``key`` at ``dst`` a verified copy of ``key`` at ``src`` (see the module docstring).

    ``data``: the source's bytes when the caller has read them already (small objects).
    Deleted after a failed check: only a copy this call wrote, or with ``replace_existing`` (the data and key
    objects of a backup whose manifest is not at the destination: nothing there refers to them yet) one found
    there. A manifest or a WAL record found there is never deleted: its presence is its commit.
    """
    retried = False
    if dst.exists(key):
        problem = _checked(check, dst, key)
        if problem is None:
            _keep_lock(dst, key, options)  # a copy interrupted between its write and its retention
            return Copied(key, size, "present")
        if not replace_existing:
            raise ChecksumMismatch(f"{key} at {dst.url} differs from the source's and is left alone: {problem}")
        dst.delete([key])
        retried = True
    problem = None
    for attempt in (1, 2):
        how, wrote = _copy(src, dst, key, size, options, data)
        problem = _checked(check, dst, key)
        if problem is None:
            if not wrote:
                _keep_lock(dst, key, options)
            return Copied(key, size, how, retried=retried or attempt > 1)
        if not (wrote or replace_existing):  # another writer's object: report it, never remove it
            raise ChecksumMismatch(f"{key} at {dst.url} differs from the source's and is left alone: {problem}")
        dst.delete([key])
    raise ChecksumMismatch(f"copy of {key} at {dst.url} is wrong after a retry: {problem}")


def _keep_lock(dst: Storage, key: str, options: WriteOptions | None) -> None:
    """Give an object found at the destination the retention this copy would have given it (S3 only)."""
    confirm = getattr(dst, "confirm_lock", None)
    if options is not None and options.lock is not None and confirm is not None:
        try:
            confirm(dst.full_key(key), options.lock)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - the storage's own error, translated
            raise dst.translate(exc, key) from exc  # type: ignore[attr-defined]


def _checked(check: Check, dst: Storage, key: str) -> str | None:
    try:
        return check(dst, key)
    except ObjectNotFound:
        return "it is not there"
    except SeedvaultError as exc:
        if isinstance(exc, IntegrityError):  # checksum, authentication, truncation: the copy is bad
            return exc.one_line()
        raise


def _copy(
    src: Storage, dst: Storage, key: str, size: int, options: WriteOptions | None, data: bytes | None
) -> tuple[str, bool]:
    """(how, whether this call wrote the object: False when another writer's was there first)."""
    how = "streamed"
    try:
        if data is not None:
            dst.put_bytes(key, data, options=options)
        elif getattr(dst, "can_copy_from", None) and dst.can_copy_from(src):  # type: ignore[attr-defined]
            dst.copy_from(src, key, size, options)  # type: ignore[attr-defined]
            how = "server-side"
        else:
            _stream(src, dst, key, options)
    except ObjectExists:  # a concurrent replicator got there first: the check decides whether it is right
        return how, False
    if faults.corrupt(FAULT_ARRIVED):
        _damage(dst, key)
    faults.reached(FAULT_ARRIVED)
    return how, True


def _stream(src: Storage, dst: Storage, key: str, options: WriteOptions | None) -> None:
    with src.open_read(key) as reader, dst.open_write(key, options=options) as writer:
        first = True
        while piece := reader.read(PIECE):
            writer.write(piece)
            if first:
                faults.reached(FAULT_STREAMING)
                first = False


def _damage(dst: Storage, key: str) -> None:
    """Flip one byte of the stored copy (``SEEDVAULT_FAULT_CORRUPT_AT``): a copy that arrived wrong."""
    data = bytearray(dst.get_bytes(key))
    if data:
        data[len(data) // 2] ^= 0x01
    else:
        data = bytearray(b"\x00")
    dst.delete([key])
    dst.put_bytes(key, bytes(data))
