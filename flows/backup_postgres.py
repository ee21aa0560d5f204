"""``backup-postgres``: one logical backup of a PostgreSQL database, verified, with an artifact.

Shape of a run::

    backup-postgres                      flow: blocks by name, preflight, retries the stream, verify, artifact
    ├── preflight                        task: key, repository, database, client tools (retried only if transient)
    ├── stream-postgres-backup           subflow, retried (``retries``) as a whole: ONE complete attempt
    │   ├── read / compress / encrypt / upload  [dump]     tasks submitted together, joined by pipes, retries=0
    │   └── read / compress / encrypt / upload  [globals]
    └── verify-backup                    task with its own retry policy (reads a committed backup)

Why the stream is a subflow: a streaming stage must never be retried alone (it would resume the middle of a
stream). A retry of the subflow calls the engine again from the start: a new snapshot and pg_dump, a new
backup id, a new plan with fresh pipes. The failed attempt's writer has already removed what it stored, and
without a manifest it is never listed. S3 parts are retried underneath by botocore, so a lost part does
not restart the stream.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from blocks import PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from seedvault.errors import SeedvaultError
from seedvault.ops.postgres_backup import backup_postgres
from seedvault.sources.postgres.logical import LogicalOptions
from tasks.metrics import pushes_metrics
from tasks.postgres import preflight
from tasks.reports import backup_summary, publish_backup_artifact, publish_failure_artifact
from tasks.retention import prune_after_backup
from tasks.status import publish_status, size_anomaly_failure
from tasks.stream import STAGES, run_object_as_tasks
from tasks.verify import verify_backup_task

# Room for every stage of an object at once (objects are streamed one after the other). Fewer workers than
# stages would deadlock the pipes, so this is pinned instead of left to PREFECT_TASK_RUNNER_* settings.
STREAM_WORKERS = 2 * len(STAGES)


@flow(
    name="stream-postgres-backup",
    task_runner=ThreadPoolTaskRunner(max_workers=STREAM_WORKERS),
    retries=2,
    retry_delay_seconds=30,
    persist_result=False,
)
def stream_postgres_backup(
    repository: str,
    key: str,
    target: str,
    database: str | None = None,
    label: str | None = None,
    checksums: bool = True,
    with_globals: bool = True,
    estimate_above: int | None = None,
) -> dict[str, Any]:
    """One complete backup attempt, from snapshot to manifest; retried as a whole by the parent."""
    repo_block = load_block(SeedvaultRepository, repository)
    repo = repo_block.open(load_block(SeedvaultEncryptionKey, key).key_source(), create=True)
    pg = load_block(PostgresTarget, target).pg_target(database)
    attempt = flow_run.get_run_count() or 1
    get_run_logger().info("backing up %s to %s (attempt %d)", pg.display(), repo_block.url, attempt)
    options = LogicalOptions(estimate_above=estimate_above, checksums=checksums, with_globals=with_globals)
    report = backup_postgres(repo, repo_block.settings(), pg, options, label=label, run_object=run_object_as_tasks)
    return backup_summary(report, attempt)


@flow(
    name="backup-postgres",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
)
@pushes_metrics
def backup_postgres_flow(
    repository: str,
    key: str,
    target: str,
    database: str | None = None,
    label: str | None = None,
    checksums: bool = True,
    with_globals: bool = True,
    estimate_above: int | None = None,
    verify: bool = True,
    prune: bool = True,
    retries: int = 2,
    retry_delay_seconds: float = 30,
    notify_block: str | None = None,
) -> dict[str, Any]:
    """Back up ``database`` (default: the target block's) into the repository; returns the summary.

    Args:
        repository: name of a saved ``SeedvaultRepository`` block.
        key: name of a saved ``SeedvaultEncryptionKey`` block.
        target: name of a saved ``PostgresTarget`` block (the server to dump).
        database: database to back up, if not the block's default.
        label: backup name label (default: the database name).
        checksums: record a SHA-256 of every table's rows (restores and DR drills compare them).
        with_globals: also store roles and tablespaces (pg_dumpall --globals-only).
        estimate_above: record planner estimates instead of exact counts above this many rows.
        verify: read the whole backup back after writing it.
        prune: after the verify passed, apply the repository block's retention policy (``prune`` flow).
        retries: how often a transient failure is retried: the preflight (database or storage not
            reachable) and the whole stream (restarted from scratch with a new dump).
        retry_delay_seconds: pause before each such retry.
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures
            (default: ``SEEDVAULT_NOTIFY_BLOCK``).
    """
    try:
        repo_block = load_block(SeedvaultRepository, repository)
        pg = load_block(PostgresTarget, target).pg_target(database)
        repo = repo_block.open(load_block(SeedvaultEncryptionKey, key).key_source(), create=True)
        policy = {"retries": retries, "retry_delay_seconds": retry_delay_seconds}
        preflight.with_options(**policy)(quote(repo), quote(pg), backup=True)
        stream = stream_postgres_backup.with_options(**policy)
        summary = stream(
            repository=repository,
            key=key,
            target=target,
            database=database,
            label=label,
            checksums=checksums,
            with_globals=with_globals,
            estimate_above=estimate_above,
        )
        if verify:
            summary["verify"] = verify_backup_task(quote(repo), summary["id"])
    except SeedvaultError as exc:
        failure = operator_error(exc)
        publish_failure_artifact("backup", pg.dbname, failure.message)
        raise failure from None
    publish_backup_artifact(summary, repo_block.url)
    anomaly = size_anomaly_failure(repo, repo_block.settings(), summary["id"])
    if anomaly is not None:  # kept and verified, but not pruned on its strength: the run fails so somebody looks
        publish_failure_artifact("backup", pg.dbname, anomaly.message)
        raise anomaly
    if prune and verify:  # last, and only after this backup passed verification
        summary["prune"] = prune_after_backup(repo, repo_block, summary["id"])
    get_run_logger().info(
        "backup %s of %s: %d tables, %d rows, %d bytes raw -> %d stored (attempt %d)",
        summary["id"],
        summary["database"],
        summary["tables"],
        summary["total_rows"],
        summary["raw_size"],
        summary["stored_size"],
        summary["attempt"],
    )
    return summary
