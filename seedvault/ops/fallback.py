"""Which repository a restore reads: the configured one, or the replica when that one cannot be reached.

Why only restores (``restore``, PITR, the drill, ``restore-platform``) fall back: they are what an operator runs
when a region is down, and reading from the replica changes nothing anywhere. Writers (backups, WAL archiving,
prune) never switch on their own: a backup written to the replica while the primary is only briefly unreachable
would exist in one place, out of the replication's order.

"Cannot be reached" is :class:`~seedvault.errors.StorageUnreachable` only (no route to the endpoint, connection
refused, the bucket or directory gone), never a wrong key, a denied permission or a missing backup: those are
answers from the repository, and the replica would hide them. The switch is said out loud, on stderr for the CLI
and in the flow's log and artifact for Prefect, naming both repositories and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from seedvault.config import Settings
from seedvault.errors import StorageUnreachable
from seedvault.repository import Repository
from seedvault.storage.base import redact_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chosen:
    repository: Repository
    settings: Settings
    note: str | None = None  # set when the replica is used: what happened, one line

    @property
    def fell_back(self) -> bool:
        return self.note is not None


def open_for_restore(
    settings: Settings,
    *,
    key: bool = True,
    warn: Callable[[str], None] | None = None,
    catalog_cache: str | None = None,
) -> Chosen:
    """The configured repository if it answers, else the replica (``[replica]``), saying so through ``warn``."""
    replica = settings.replica_settings()
    second = None if replica is None else (lambda: _open(replica, key=key, cache=catalog_cache))
    repo, note = first_reachable(
        lambda: _open(settings, key=key, cache=catalog_cache),
        settings.repository or "",
        second,
        (replica.repository or "") if replica is not None else "",
        warn=warn,
    )
    if note is None:
        return Chosen(repo, settings)
    assert replica is not None  # only a configured replica can be fallen back to
    return Chosen(repo, replica, note)


def first_reachable(
    first: Callable[[], Repository],
    first_url: str,
    replica: Callable[[], Repository] | None,
    replica_url: str,
    *,
    warn: Callable[[str], None] | None = None,
) -> tuple[Repository, str | None]:
    """``first()`` (which opens and probes), or on StorageUnreachable ``replica()``: (repository, the note said).

    The one fallback rule, for the CLI (settings) and the Prefect flows (blocks) alike; anything but an
    unreachable repository propagates unchanged.
    """
    try:
        return first(), None
    except StorageUnreachable as exc:
        if replica is None:
            raise
        primary, second = redact_url(first_url), redact_url(replica_url)
        try:
            repo = replica()
        except StorageUnreachable as again:
            raise StorageUnreachable(
                f"neither repository can be reached: {primary} ({exc.one_line()}) nor the replica "
                f"{second} ({again.one_line()})"
            ) from exc
        note = f"repository {primary} is unreachable ({exc.one_line()}); reading from the replica {second}"
        (warn or log.warning)(f"seedvault: warning: {note}")
        repo.is_replica = True  # type: ignore[attr-defined]  # PITR reads WAL from the replica too
        return repo, note


def _open(settings: Settings, *, key: bool, cache: str | None) -> Repository:
    from seedvault.storage.open import open_storage

    storage = open_storage(settings)
    storage.check()
    repo = Repository(storage, settings.key_source(required=key))
    repo.catalog_cache = cache if cache is not None else settings.catalog_cache  # type: ignore[attr-defined]
    return repo
