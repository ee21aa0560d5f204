"""``prune``: apply the repository block's retention policy, with the plan as an artifact.

Each backup flow already ends with a prune (after its verify passed); this flow is the same task on its own,
for a daily run and for operators (``dry_run=True`` shows the plan in the UI without deleting anything).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.utilities.annotations import quote

from blocks import SeedvaultEncryptionKey, SeedvaultRepository
from flows.failures import load_block, notify_failure, notify_recovered, operator_error, remind_status_alerts
from seedvault.errors import SeedvaultError
from tasks.metrics import pushes_metrics
from tasks.retention import prune_task
from tasks.status import publish_status


@flow(
    name="prune",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
)
@pushes_metrics
def prune_flow(repository: str, key: str, dry_run: bool = False, notify_block: str | None = None) -> dict[str, Any]:
    """Delete what the retention policy (the repository block's ``retention``) no longer keeps.

    Args:
        repository: name of a saved ``SeedvaultRepository`` block (its ``retention`` is the policy).
        key: name of a saved ``SeedvaultEncryptionKey`` block.
        dry_run: only publish the plan; delete nothing.
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures, and for the daily
            reminder of a master key older than the rotation age (the status view's ``key-age`` alert).
    """
    try:
        repo_block = load_block(SeedvaultRepository, repository)
        repo = repo_block.open(load_block(SeedvaultEncryptionKey, key).key_source())
        result = prune_task(quote(repo), quote(repo_block.settings()), repo_block.url, dry_run=dry_run)
    except SeedvaultError as exc:
        raise operator_error(exc) from None
    result["reminders"] = remind_status_alerts(repo, repo_block.settings(), notify_block, repo_block.url)
    return result
