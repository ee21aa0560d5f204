"""``restore-postgres``: restore a backup (by id, or the latest of a database) into a new database, verified.

The engine does the work and the checking (row counts against the manifest, content checksums where the
backup recorded them); a failure drops the database it created, and ``replace`` never touches the live
database before the restored copy is verified. The flow adds blocks, the latest-backup lookup and an artifact.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.utilities.annotations import quote

from blocks import PostgresTarget
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from flows.repositories import open_for_restore
from seedvault.errors import SeedvaultError
from seedvault.ops.postgres_restore import RestoreOptions
from tasks.postgres import latest_backup, preflight, restore_task
from tasks.reports import publish_failure_artifact, publish_restore_artifact
from tasks.status import publish_status


@flow(
    name="restore-postgres",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
)
def restore_postgres_flow(
    repository: str,
    key: str,
    target: str,
    database: str,
    backup_id: str | None = None,
    source_database: str | None = None,
    replace: bool = False,
    with_globals: bool = False,
    no_owner: bool = False,
    checksums: bool = True,
    jobs: int | None = None,
    replica: str | None = None,
    notify_block: str | None = None,
) -> dict[str, Any]:
    """Restore into ``database`` on the target block's server; returns the verification report.

    Args:
        repository, key, target: names of saved seedvault blocks (the target is the server to restore into).
        database: the database to create (or, with ``replace``, to replace keeping a safety copy).
        backup_id: the backup to restore; default: the latest backup of ``source_database``.
        source_database: whose latest backup to take (default: the target block's database).
        replace: off (the default): restore into ``database``, which must not exist, so live data is never
            touched. On: ``database`` is replaced: the backup is restored under a new name and verified, the
            live database is renamed to a safety copy, the restored one takes its name; the copy stays until
            you drop it (RUNBOOK.md section 11).
        with_globals: also restore roles and tablespaces stored with the backup.
        no_owner: skip ownership and privileges (a server without the source's roles).
        checksums: compare every table's content checksum, not only its row count.
        jobs: parallel pg_restore jobs (the backup is spooled to local disk first); empty: one stream, no spool.
        replica: name of the second ``SeedvaultRepository`` block (the ``replicate`` flow's destination): read
            from it when this repository is unreachable, saying so in the log and the result (empty: never).
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures.
    """
    try:
        blk = load_block(PostgresTarget, target)
        pg = blk.pg_target(database)
        opened = open_for_restore(repository, key, replica)
        repo = opened.repo
        preflight(quote(repo), quote(pg), backup=False)
        if backup_id is None:
            backup_id = latest_backup(quote(repo), source_database or blk.database)
        options = RestoreOptions(
            replace=replace, with_globals=with_globals, no_owner=no_owner, checksums=checksums, jobs=jobs
        )
        report = restore_task(quote(repo), backup_id, quote(pg), quote(options))
    except SeedvaultError as exc:
        failure = operator_error(exc)
        publish_failure_artifact("restore", database, failure.message)
        raise failure from None
    report["read_from_replica"] = opened.note
    publish_restore_artifact(report)
    return report
