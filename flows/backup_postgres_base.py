"""``backup-postgres-base``: one physical base backup of a PostgreSQL server, verified, with an artifact.

Shape of a run::

    backup-postgres-base                 flow: blocks by name, the backup, verify, artifact
    ├── backup-postgres-base             task: pg_basebackup tar -> compress -> encrypt -> storage, in one
    │                                    engine call; retried whole (``retries``) only for transient errors
    └── verify-backup                    task: read every byte back through the authenticators

Why daily: a point-in-time recovery replays all WAL since its base backup, so the base backup's age bounds
the replay time (and the WAL that must be kept). Between base backups the server archives its WAL
continuously (``archive_command = 'seedvault wal-push %p'``), and ``check-wal-freshness`` watches that.
The engine commits a base backup only after every WAL segment of its range is in the repository, so a
backup in the list is always restorable to its end at least.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from blocks import PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from seedvault.errors import SeedvaultError
from tasks.metrics import pushes_metrics
from tasks.reports import publish_base_backup_artifact, publish_server_failure_artifact
from tasks.retention import prune_after_backup
from tasks.status import publish_status, size_anomaly_failure
from tasks.verify import verify_backup_task
from tasks.wal import base_backup_task


@flow(
    name="backup-postgres-base",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
)
@pushes_metrics
def backup_postgres_base_flow(
    repository: str,
    key: str,
    target: str,
    label: str | None = None,
    checkpoint: str = "fast",
    wal_wait: float = 600.0,
    verify: bool = True,
    prune: bool = True,
    retries: int = 1,
    retry_delay_seconds: float = 60,
    notify_block: str | None = None,
) -> dict[str, Any]:
    """Take a physical base backup of the target block's server into the repository; returns the summary.

    Args:
        repository: name of a saved ``SeedvaultRepository`` block.
        key: name of a saved ``SeedvaultEncryptionKey`` block.
        target: name of a saved ``PostgresTarget`` block; its role needs REPLICATION, and the server must
            archive its WAL into the same repository (``seedvault wal-push``).
        label: backup name label (default: ``pg-<system id>``).
        checkpoint: ``fast`` (start at once, an immediate checkpoint) or ``spread`` (gentler, slower start).
        wal_wait: seconds pg_basebackup may wait for the backup's last WAL segment to be archived.
        verify: read the whole backup back after writing it.
        prune: after the verify passed, apply the repository block's retention policy (``prune`` flow).
        retries: how often a transient failure (server or storage unreachable) restarts the backup.
        retry_delay_seconds: pause before each such retry.
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures
            (default: ``SEEDVAULT_NOTIFY_BLOCK``).
    """
    try:
        repo_block = load_block(SeedvaultRepository, repository)
        pg = load_block(PostgresTarget, target).pg_target()
        repo = repo_block.open(load_block(SeedvaultEncryptionKey, key).key_source(), create=True)
        backup = base_backup_task.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
        summary = backup(
            quote(repo), quote(repo_block.settings()), quote(pg), label=label, checkpoint=checkpoint, wal_wait=wal_wait
        )
        if verify:
            summary["verify"] = verify_backup_task(quote(repo), summary["id"])
    except SeedvaultError as exc:
        failure = operator_error(exc)
        publish_server_failure_artifact("base-backup", target, pg.display(), failure.message)
        raise failure from None
    publish_base_backup_artifact(summary, repo_block.url, target, pg.display())
    anomaly = size_anomaly_failure(repo, repo_block.settings(), summary["id"])
    if anomaly is not None:  # kept and verified, but not pruned on its strength: the run fails so somebody looks
        publish_server_failure_artifact("base-backup", target, pg.display(), anomaly.message)
        raise anomaly
    if prune and verify:  # last, and only after this backup passed verification
        summary["prune"] = prune_after_backup(repo, repo_block, summary["id"])
    get_run_logger().info(
        "base backup %s of system %s (timeline %s, %s..%s): %d bytes raw -> %d stored",
        summary["id"],
        summary["system_id"],
        summary["timeline"],
        summary["start_wal"],
        summary["stop_wal"],
        summary["raw_size"],
        summary["stored_size"],
    )
    return summary
