"""Neo4j tasks around the engine: preflight, latest backup, one backup, one restore.

Each backup or restore is one engine call inside one task: neo4j-admin's stream goes to storage (or back)
inside the engine, never through a pipe between tasks. So retrying a task is retrying it whole.

Retry decisions, and why:

* ``neo4j-preflight`` (nothing touched yet): retried for what may heal by itself (neo4j-admin's host or
  container not answering through the prefix, storage unreachable), never for configuration.
* ``backup-neo4j``: may be retried whole (the flow's ``retries``). A new attempt starts from scratch: a new
  backup id, a fresh staging directory; the failed attempt's writer has removed what it stored, and the
  engine started the database again before raising. An offline dump's retry is another downtime window, so
  the default is one retry. Retried: neo4j-admin (or the stop command, or docker/kubectl/ssh) ran and
  failed, or storage was unreachable. Never retried: configuration, key, integrity and "backup not found"
  errors (a DIFF without a FULL), a missing tool, a timeout, any Bolt error, and above all a database that
  could not be started again, which needs a person now, not another stop.
* ``restore-neo4j``: never retried. When a restore fails after its safety copy, the engine has already
  put the previous database back from that copy and says so in the error; a blind retry would stop the
  database again, take another safety copy of the rolled-back database, and most likely fail the same way
  (a count mismatch or a bad backup does not heal). If even the roll-back failed, the error names the
  safety copy to restore by hand; a retry would stop the half-restored database and take a "safety copy"
  of *that*, the newest copy then no longer being the database to go back to. The operator decides.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from seedvault.config import Settings
from seedvault.errors import (
    BackupNotFound,
    ConfigError,
    DatabaseLeftStopped,
    SourceError,
    StorageUnreachable,
    ToolMissing,
    TransientStorageError,
)
from seedvault.ops.neo4j_backup import KIND, MODES, Neo4jJob, backup_neo4j
from seedvault.ops.neo4j_restore import restore_neo4j
from seedvault.repository import Repository
from tasks.reports import neo4j_backup_summary

SAFETY_LABEL = "safety-"  # the engine's label of the copy a restore takes first
# The engine's words for a command that ran and failed (seedvault.process, Admin.run, run_local) ...
COMMAND_FAILED = " failed (exit "


def left_stopped(exc: BaseException) -> bool:
    """The database may be down: the engine could not start it again (a person must, now)."""
    return isinstance(exc, DatabaseLeftStopped)


def neo4j_transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    """Retry a whole Neo4j step only for what another attempt may fix (see the module docstring).

    That is storage not reachable, or neo4j-admin (or a stop command, or the prefix's docker/kubectl/ssh)
    having run and failed. Not an unsupported version, a Community server asked for an online backup, a
    timeout, a missing program, or a database left stopped. Nor any Bolt error: the engine's messages do not
    say whether a Bolt failure came before the stop (harmless) or from START DATABASE after the dump (the
    database is down), so none is retried.
    """
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, StorageUnreachable | TransientStorageError):
        return True
    return (
        isinstance(exc, SourceError)
        and not isinstance(exc, ToolMissing)
        and COMMAND_FAILED in str(exc)
        and not left_stopped(exc)
    )


@task(
    name="neo4j-preflight",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=neo4j_transient,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def neo4j_preflight(repo: Repository, job: Neo4jJob, *, mode: str, backup: bool) -> dict[str, Any]:
    """Fail before the database is touched on what retrying cannot fix: key, repository, tool, edition.

    Resolves the master key against the repository (a backup creates its config on first use) and, unless
    the backup is (or restores) a Bolt export, asks neo4j-admin for its version through the configured
    prefix. Online backups (taking or restoring them) on a Community server are refused here, as a
    configuration error.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}")
    repo.config(create=backup)
    key_id = repo.master.key_id
    info: dict[str, Any] = {"repository": repo.storage.url, "key_id": key_id, "version": None, "edition": None}
    if mode != "export":
        version = job.admin.version()
        edition = job.edition or version.edition
        info.update(version=version.text, dialect=version.dialect, edition=edition)  # refuses 3.5 and 4.0-4.3
        if mode == "online" and edition == "community":
            raise ConfigError(
                f"online backups need Neo4j Enterprise, and neo4j-admin {version.text} is Community",
                hint="use mode dump (offline, with stop/start commands) or export (Bolt)"
                if backup
                else "restore this backup with an Enterprise neo4j-admin",
            )
    get_run_logger().info(
        "repository %s, key %s, neo4j-admin %s (%s) via %s, Bolt %s",
        info["repository"],
        key_id,
        info["version"] or "not needed",
        info["edition"] or "edition unknown",
        job.admin.config.describe(),
        "configured (counts)" if job.graph is not None else "not configured (no counts)",
    )
    return info


@task(name="latest-neo4j-backup", cache_policy=NO_CACHE, persist_result=False)
def latest_neo4j_backup(repo: Repository, database: str) -> str:
    """The newest complete, authenticated Neo4j backup of ``database`` (a restore's safety copies excluded).

    Unreadable backups are skipped, with a warning naming each newer one (see tasks.postgres.latest_backup).
    """
    repo.config()  # "no seedvault repository at ..." rather than "no backup"

    def of_database(body: dict) -> bool:
        return (
            body.get("kind") == KIND
            and body["source"].get("database") == database
            and not str(body["labels"].get("name", "")).startswith(SAFETY_LABEL)
        )

    from seedvault.catalog import Catalog

    entry, skipped = Catalog(repo).latest(of_database)
    for bad in skipped:
        get_run_logger().warning("skipped backup %s, which cannot be read: %s", bad.backup_id, bad.problem)
    if entry is None:
        raise BackupNotFound(f"no complete Neo4j backup of database {database} in {repo.storage.url}")
    get_run_logger().info("latest Neo4j backup of %s: %s", database, entry.backup_id)
    return entry.backup_id


@task(
    name="backup-neo4j",
    retries=0,  # set per run by the flow (its ``retries``), see the module docstring
    retry_condition_fn=neo4j_transient,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def backup_neo4j_task(
    repo: Repository,
    settings: Settings,
    job: Neo4jJob,
    *,
    mode: str,
    backup_type: str,
    label: str | None,
    staging: bool,
) -> dict[str, Any]:
    """One Neo4j backup (see seedvault.ops.neo4j_backup); returns its summary."""
    attempt = task_run.get_run_count() or 1
    report = backup_neo4j(repo, settings, job, mode=mode, backup_type=backup_type, label=label, staging=staging)
    summary = neo4j_backup_summary(report, attempt)
    down = summary["downtime_seconds"]
    get_run_logger().info(
        "backup %s of neo4j %s (%s%s): %d bytes raw -> %d stored, %s (attempt %d)",
        summary["id"],
        summary["database"],
        summary["mode"],
        f" {summary['backup_type']}" if summary["backup_type"] else "",
        summary["raw_size"],
        summary["stored_size"],
        "no downtime" if down is None else f"downtime {down:.3f} s",
        attempt,
    )
    return summary


@task(name="restore-neo4j", retries=0, cache_policy=NO_CACHE, persist_result=False)
def restore_neo4j_task(
    repo: Repository,
    settings: Settings,
    backup_id: str,
    job: Neo4jJob,
    *,
    safety_copy: bool,
    until: str | None,
    staging: bool,
) -> dict[str, Any]:
    """Restore over the database after a verified safety copy; never retried (see the module docstring)."""
    report = restore_neo4j(
        repo, settings, backup_id, job, safety_copy=safety_copy, until=until, staging=staging
    ).as_dict()
    report["seconds"] = {k: round(v, 3) for k, v in report["seconds"].items()}
    get_run_logger().info(
        "restored %s into neo4j %s: %s; %s",
        backup_id,
        job.database,
        "counts verified" if report["counts"] is not None else "counts not checked (no Bolt URI)",
        f"previous database kept as backup {report['safety_copy']}" if report["safety_copy"] else "no safety copy",
    )
    return report
