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
from seedvault.ops.fallback import first_reachable
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
    if not replica:
        return Opened(block.open(key_source), block)
    other = load_block(SeedvaultRepository, replica)

    def probed(b: Any) -> Repository:
        repo = b.open(key_source)
        repo.storage.check()
        return repo

    from prefect import get_run_logger

    repo, note = first_reachable(lambda: probed(block), block.url, lambda: probed(other), other.url,
                                 warn=lambda line: get_run_logger().warning(line))  # fmt: skip
    return Opened(repo, other if note else block, note)
