"""``backup-platform``: one recovery point for the graph and the time series (a platform group), then prune.

Shape of a run::

    backup-platform                      flow: blocks by name, one engine call, verify, artifact, prune
    ├── backup-platform                  task: Neo4j backup; at the graph's consistency moment a PostgreSQL
    │                                    restore point + WAL switch; per-table counts at that point; the
    │                                    group committed last (seedvault.ops.platform); never retried
    └── verify-backup                    task: the group, its members (by digest) and the WAL to its point

The PostgreSQL server must archive its WAL into the same repository (``archive_command = 'seedvault wal-push
%p'``) and have a base backup (the daily ``backup-postgres-base``); the CLI twin is ``seedvault backup platform``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from blocks import Neo4jTarget, PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from seedvault.errors import SeedvaultError
from tasks.metrics import pushes_metrics
from tasks.platform import backup_platform_task, publish_group_artifact
from tasks.reports import publish_failure_artifact
from tasks.retention import prune_after_backup
from tasks.status import publish_status
from tasks.verify import verify_backup_task


@flow(
    name="backup-platform",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
)
@pushes_metrics
def backup_platform_flow(
    repository: str,
    key: str,
    target: str,
    neo4j_target: str,
    database: str | None = None,
    neo4j_database: str | None = None,
    mode: str = "dump",
    label: str | None = None,
    verify: bool = True,
    prune: bool = True,
    notify_block: str | None = None,
) -> dict[str, Any]:
    """Take a platform group: ``neo4j_target``'s backup and a restore point on ``target`` (the primary).

    Args:
        repository, key: names of the saved repository and key blocks.
        target: ``PostgresTarget`` block of the primary (a role that may call pg_create_restore_point).
        neo4j_target: ``Neo4jTarget`` block of the graph (stop/start commands for a Community dump).
        database, neo4j_database: override the blocks' databases.
        mode: Neo4j side, ``dump`` (offline) or ``online`` (Enterprise); ``export`` is refused for groups.
        label: group name (default ``platform``).
        verify: verify the group (members and WAL) after it is committed; prune only after that passed.
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures.
    """
    try:
        repo_block = load_block(SeedvaultRepository, repository)
        pg_blk, n_blk = load_block(PostgresTarget, target), load_block(Neo4jTarget, neo4j_target)
        with n_blk.open_job(neo4j_database) as job:
            repo = repo_block.open(load_block(SeedvaultEncryptionKey, key).key_source(), create=True)
            summary = backup_platform_task(quote(repo), quote(repo_block.settings()), quote(job),
                                           quote(pg_blk.pg_target(database)), mode=mode, label=label)  # fmt: skip
            if verify:
                summary["verify"] = verify_backup_task(quote(repo), summary["id"])
    except SeedvaultError as exc:
        failure = operator_error(exc)
        publish_failure_artifact("backup-platform", label or "platform", failure.message)
        raise failure from None
    publish_group_artifact(summary, repo_block.url)
    if prune and verify:
        summary["prune"] = prune_after_backup(repo, repo_block, summary["id"])
    get_run_logger().info(
        "platform group %s: neo4j %s, restore point %s, skew %.3f s", summary["id"], summary["neo4j_backup"],
        summary["restore_point"]["name"], summary["skew_seconds"],
    )  # fmt: skip
    return summary
