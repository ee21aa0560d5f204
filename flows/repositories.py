"""The repository a flow reads, from its blocks: the first one, or for restores the replica when it is unreachable.

Restore, PITR, platform-restore and drill flows take an optional ``replica`` (a second ``SeedvaultRepository``
block, the destination of the ``replicate`` flow). When the first repository cannot be reached, they read from
the replica and say so in the run's log and artifact; anything else (a wrong key, a missing backup) is the first
repository's answer and fails as before. Why only restores: :mod:`seedvault.ops.fallback`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blocks import SeedvaultEncryptionKey, SeedvaultRepository
from flows.failures import load_block
from seedvault.errors import StorageUnreachable
from seedvault.repository import Repository


@dataclass(frozen=True)
class Opened:
    repo: Repository
    block: Any  # the SeedvaultRepository block read from
    note: str | None = None  # set when the replica is read instead: what happened, one line


def open_for_restore(repository: str, key: str, replica: str | None) -> Opened:
    """Load the blocks; with ``replica``, probe the first repository and fall back to the replica if unreachable."""
    block = load_block(SeedvaultRepository, repository)
    key_source = load_block(SeedvaultEncryptionKey, key).key_source()
    try:
        repo = block.open(key_source)
        if replica:
            repo.storage.check()
        return Opened(repo, block)
    except StorageUnreachable as exc:
        if not replica:
            raise
        other = load_block(SeedvaultRepository, replica)
        try:
            second = other.open(key_source)
            second.storage.check()
        except StorageUnreachable as again:
            raise StorageUnreachable(
                f"neither repository can be reached: {block.url} ({exc.one_line()}) nor the replica {other.url} "
                f"({again.one_line()})"
            ) from exc
        second.is_replica = True  # type: ignore[attr-defined]  # PITR reads WAL from the replica too
        note = f"repository {block.url} is unreachable ({exc.one_line()}); reading from the replica {other.url}"
        from prefect import get_run_logger

        get_run_logger().warning("seedvault: warning: %s", note)
        return Opened(second, other, note)
