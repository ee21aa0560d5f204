"""``verify-repository``: scheduled verification of what is stored, with an artifact of what was read.

Scopes: ``sample`` (a rotating ``percent`` slice of every backup's data objects, every manifest
authenticated: weekly at 25 % reads everything within a month), ``all`` (every byte, monthly), ``latest``
(the newest backup of each kind and label) and ``wal`` (every archived segment from the oldest base
backup's start, daily). A failure names every bad backup or segment, fails the run and notifies.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.utilities.annotations import quote

from blocks import SeedvaultEncryptionKey, SeedvaultRepository
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from seedvault.errors import SeedvaultError
from tasks.metrics import pushes_metrics
from tasks.retention import verify_scope_task
from tasks.status import publish_status


@flow(
    name="verify-repository",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
)
@pushes_metrics
def verify_repository_flow(
    repository: str, key: str, scope: str = "sample", percent: int = 25, notify_block: str | None = None
) -> dict[str, Any]:
    """Verify ``scope`` of the repository: ``sample`` (``percent``), ``all``, ``latest`` or ``wal``.

    Args:
        repository: name of a saved ``SeedvaultRepository`` block.
        key: name of a saved ``SeedvaultEncryptionKey`` block.
        scope: sample | all | latest | wal.
        percent: with ``sample``: the slice size (1-100); the slice rotates with the UTC day.
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures.
    """
    try:
        repo_block = load_block(SeedvaultRepository, repository)
        repo = repo_block.open(load_block(SeedvaultEncryptionKey, key).key_source())
        return verify_scope_task(quote(repo), repo_block.url, scope, percent)
    except SeedvaultError as exc:
        raise operator_error(exc) from None
