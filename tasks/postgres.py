"""PostgreSQL tasks around the engine: preflight, latest backup, restore, dropping a scratch database.

Each is a plain engine call. The restore streams storage -> pg_restore inside one task (no pipe between
tasks), and the engine drops a database it created when anything fails, so a restore never leaves a
half-restored database behind.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql

from seedvault.errors import (
    BackupNotFound,
    DatabaseRefused,
    DatabaseUnreachable,
    StorageUnreachable,
    TargetError,
    TransientStorageError,
)
from seedvault.ops.postgres_restore import RestoreOptions, restore_postgres
from seedvault.repository import Repository
from seedvault.sources.postgres.binaries import find_client_binaries
from seedvault.sources.postgres.connection import PgTarget

KIND = "postgres-logical"
_TRANSIENT = (DatabaseUnreachable, StorageUnreachable, TransientStorageError)


def transient_only(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    """Retry only what may heal by itself (server restarting, network), never bad config or a wrong password."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, _TRANSIENT) and not isinstance(exc, DatabaseRefused)


@task(
    name="preflight",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=transient_only,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def preflight(repo: Repository, target: PgTarget, *, backup: bool) -> dict[str, Any]:
    """Fail fast, before any stream starts, on what retrying a stream cannot fix: key, repository, database.

    Resolves the master key against the repository (wrong or invalid key; a backup creates the repository
    config on first use), connects to the database (a backup's source; for a restore the server's
    ``postgres`` database, the target does not exist yet) and finds client binaries fitting the server.
    """
    repo.config(create=backup)
    key_id = repo.master.key_id
    with target.connect(dbname=None if backup else "postgres") as conn:
        num = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()[0]
    tools = find_client_binaries(num // 10000)
    get_run_logger().info(
        "repository %s, key %s, server %s (PostgreSQL %d), clients %s",
        repo.storage.url,
        key_id,
        target.display(),
        num // 10000,
        f"{tools.bindir} ({tools.origin})",
    )
    return {"repository": repo.storage.url, "key_id": key_id, "server_major": num // 10000}


@task(name="latest-backup", cache_policy=NO_CACHE, persist_result=False)
def latest_backup(repo: Repository, database: str) -> str:
    """The newest complete, authenticated PostgreSQL backup of ``database``.

    Unreadable backups (a damaged manifest or key object) are skipped, with a warning naming each newer one:
    one damaged old object must not block every restore.
    """

    def of_database(body: dict) -> bool:
        named = body["labels"].get("database") or body["source"].get("database")
        return body.get("kind") == KIND and named == database

    from seedvault.catalog import Catalog

    entry, skipped = Catalog(repo).latest(of_database)
    for bad in skipped:
        get_run_logger().warning("skipped backup %s, which cannot be read: %s", bad.backup_id, bad.problem)
    if entry is None:
        raise BackupNotFound(f"no complete backup of database {database} in {repo.storage.url}")
    get_run_logger().info("latest backup of %s: %s", database, entry.backup_id)
    return entry.backup_id


@task(name="restore-postgres", retries=0, cache_policy=NO_CACHE, persist_result=False)
def restore_task(
    repo: Repository, backup_id: str, target: PgTarget, options: RestoreOptions, purpose: str = "restore"
) -> dict[str, Any]:
    """Restore and verify (row counts, checksums where recorded); see seedvault.ops.postgres_restore.

    ``purpose="drill"``: audited as a restore test (what ``list`` shows as "restore-tested")."""
    report = restore_postgres(repo, backup_id, target, options, purpose=purpose)
    get_run_logger().info(
        "restored %s into %s: %d tables, %d rows, %d checksums verified",
        backup_id,
        report.database,
        report.tables_verified,
        report.rows_verified,
        report.checksums_verified,
    )
    return report.as_dict()


@task(name="drop-database", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE, persist_result=False)
def drop_database(target: PgTarget, name: str, *, protect: str) -> float:
    """Drop a scratch database (never ``protect``, the database the drill is about)."""
    if name == protect:
        raise TargetError(f"refusing to drop {name}: it is the database the drill protects")
    started = time.perf_counter()
    with target.connect(dbname="postgres") as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    get_run_logger().info("dropped scratch database %s", name)
    return round(time.perf_counter() - started, 3)
