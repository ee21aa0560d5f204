"""The repository secret: one random key per repository, wrapped under each master key, for repository-wide MACs.

Backups authenticate themselves with their own data keys, but what spans backups (the audit log's events, the
catalog's index entries) needs one key that every reader with a master key can have in one request, and that
survives key rotation as data keys do. That is the repository secret::

    v1/repokey/<key id>.json    the secret wrapped under one master key (format seedvault-repository-key)

It is created once, by the first writer that needs it (no overwrite: two first writers agree on the one that
landed), wrapped with the repository's id bound in (scope ``repository/<repository id>``), so a secret object
copied from another repository does not open. ``key rotate`` wraps it under the new key too and ``key retire``
removes the old key's object, exactly like a backup's data key (seedvault.ops.keys). Purpose keys are derived
from it with HKDF (:func:`subkey`), one per use, so an audit MAC can never be replayed as a catalog MAC.
"""

from __future__ import annotations

import json
import threading

from seedvault.crypto.keys import MasterKey, hkdf, new_data_key
from seedvault.errors import (
    AuthenticationFailed,
    KeyMissing,
    ObjectExists,
    ObjectNotFound,
    UnsupportedVersion,
    WrongKey,
)
from seedvault.format import layout
from seedvault.format.fields import Fields, corrupted, is_int, load_json
from seedvault.repository import Repository

FORMAT = "seedvault-repository-key"
PREFIX = f"{layout.ROOT}/repokey/"
_cache_lock = threading.Lock()


def secret_path(key_id: str) -> str:
    return f"{PREFIX}{key_id}.json"


def scope(repo: Repository) -> str:
    """What the secret is wrapped for: this repository's id (FORMAT.md "Repository secret")."""
    return f"repository/{repo.config()['id']}"


def wrapped_for(repo: Repository) -> set[str]:
    """Ids of the master keys the secret is wrapped under (empty: no secret yet)."""
    return {
        name.removesuffix(".json")
        for info in repo.storage.list(PREFIX)
        if (name := info.key[len(PREFIX) :]).endswith(".json") and layout.KEY_ID_RE.match(name.removesuffix(".json"))
    }


def read_secret(repo: Repository, master: MasterKey) -> bytes:
    """The secret unwrapped with ``master``: ObjectNotFound when it has no object for that key."""
    data = repo.storage.get_bytes(secret_path(master.key_id))
    fail = corrupted("repository secret object", AuthenticationFailed)
    record = Fields(load_json(data, fail), fail)
    version = record.raw("version", optional=True)
    if record.raw("format", optional=True) != FORMAT or not is_int(version) or version != 1:
        raise UnsupportedVersion(
            "the repository secret object has an unknown format or version", hint="upgrade seedvault"
        )
    record.text("key_id", pattern=layout.KEY_ID_RE)
    return master.unwrap(record.data, scope(repo))


def write_secret(repo: Repository, secret: bytes, master: MasterKey) -> None:
    """Store the secret wrapped under ``master`` (no overwrite: ObjectExists when it is there)."""
    record = {"format": FORMAT, "version": 1, "key_id": master.key_id, "cipher": "aes-256-gcm"}
    record.update(master.wrap(secret, scope(repo)))
    repo.storage.put_bytes(secret_path(master.key_id), json.dumps(record, sort_keys=True, indent=2).encode() + b"\n")


def secret(repo: Repository, *, create: bool = False) -> bytes:
    """The repository secret under the configured master key (cached on ``repo``).

    ``create``: make it when the repository has none yet (a writer's first audit event or index entry).
    Wrapped only for other keys: WrongKey naming them (run ``key rotate`` with one of them configured).
    None at all and not ``create``: KeyMissing.
    """
    cached = getattr(repo, "_repository_secret", None)
    if cached is not None:
        return cached
    with _cache_lock:
        master = repo.master
        try:
            value = read_secret(repo, master)
        except ObjectNotFound:
            others = sorted(wrapped_for(repo) - {master.key_id})
            if others:
                raise WrongKey(
                    f"wrong key: the repository secret is not wrapped for key {master.key_id} "
                    f"(wrapped for: {', '.join(others)})",
                    hint="use the repository's key, or run 'seedvault key rotate' with it configured first",
                ) from None
            if not create:
                raise KeyMissing(
                    "this repository has no repository secret yet (no audit event or catalog entry was written)"
                ) from None
            value = new_data_key()
            try:
                write_secret(repo, value, master)
            except ObjectExists:  # another first writer won: use theirs
                value = read_secret(repo, master)
        repo._repository_secret = value  # type: ignore[attr-defined]
        return value


def subkey(repo: Repository, purpose: str, *, create: bool = False) -> bytes:
    """A key for one purpose ("audit", "catalog"...), derived from the repository secret."""
    return hkdf(secret(repo, create=create), b"seedvault/v1/repository/" + purpose.encode())
