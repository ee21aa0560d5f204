"""WAL tasks: the physical base backup and the archiving freshness check, one engine call each.

The base backup streams pg_basebackup -> storage inside one task (no pipe between tasks), so retrying it
is retrying it whole: a new pg_basebackup, a new backup id, while the failed attempt's writer has already
removed what it stored. The freshness check *returns* its report, with the problems in it, instead of
raising: the flow publishes the numbers either way, then fails the run with the report's first problem.
Both retry only what may heal by itself (server restarting, storage unreachable), never a verdict.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from seedvault.config import Settings
from seedvault.ops.postgres_base import backup_postgres_base
from seedvault.ops.wal_freshness import FreshnessReport, check_wal_freshness
from seedvault.repository import Repository
from seedvault.sources.postgres.connection import PgTarget
from tasks.postgres import transient_only
from tasks.reports import base_backup_summary


@task(
    name="backup-postgres-base",
    retries=0,
    retry_condition_fn=transient_only,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def base_backup_task(
    repo: Repository,
    settings: Settings,
    target: PgTarget,
    *,
    label: str | None = None,
    checkpoint: str = "fast",
    wal_wait: float = 600.0,
) -> dict[str, Any]:
    """One physical base backup (see seedvault.ops.postgres_base); returns its summary."""
    body = backup_postgres_base(repo, settings, target, label=label, checkpoint=checkpoint, wal_wait=wal_wait)
    summary = base_backup_summary(body, task_run.get_run_count() or 1)
    get_run_logger().info(
        "base backup %s of system %s: timeline %s, %s..%s, %d bytes raw -> %d stored in %.1f s",
        summary["id"],
        summary["system_id"],
        summary["timeline"],
        summary["start_lsn"],
        summary["stop_lsn"],
        summary["raw_size"],
        summary["stored_size"],
        summary["seconds"]["total"],
    )
    return summary


@task(
    name="check-wal-freshness",
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=transient_only,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def wal_freshness_task(repo: Repository, target: PgTarget, max_lag: float) -> FreshnessReport:
    """Judge the server's WAL archiving into the repository; the verdict is in the report, not raised."""
    report = check_wal_freshness(repo, target, max_lag=max_lag)
    log = get_run_logger()
    if report.ok:
        log.info("%s", report.summary())
    for problem in report.problems:
        log.error("%s: %s", problem.kind, problem.message)
    for note in report.notes:
        log.info("note: %s", note)
    return report
