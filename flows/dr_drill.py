"""``dr-drill``: prove, monthly, that the latest backup of a database can be restored and is complete.

Steps: find the latest complete backup of the database; verify it (every byte read back through the
authenticators); restore it into a scratch database, which the engine checks table by table (row counts
against the manifest, content checksums where the backup recorded them); drop the scratch database; publish
an artifact with the counts and the backup's age. The scratch database is dropped only if this drill created
it: a failed restore is dropped by the engine, and an existing database of that name is refused, never dropped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from blocks import PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository
from flows.failures import notify_failure, operator_error
from seedvault.errors import SeedvaultError, UsageError
from seedvault.ops.postgres_restore import RestoreOptions
from tasks.postgres import drop_database, latest_backup, preflight, restore_task
from tasks.reports import publish_drill_artifact, publish_failure_artifact
from tasks.verify import verify_backup_task


def scratch_name(source: str, now: datetime | None = None) -> str:
    suffix = "_drill_" + (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    return source[: 63 - len(suffix)] + suffix


@flow(name="dr-drill", on_failure=[notify_failure], on_crashed=[notify_failure], persist_result=False)
def dr_drill_flow(
    repository: str,
    key: str,
    target: str,
    database: str | None = None,
    scratch_database: str | None = None,
    no_owner: bool = False,
    notify_block: str | None = None,
) -> dict[str, Any]:
    """Restore the latest backup of ``database`` into a scratch database on the target server, verify, drop.

    Args:
        repository, key: names of the saved repository and key blocks.
        target: name of the ``PostgresTarget`` block of the server to restore on (a DR server, or the source).
        database: whose latest backup to drill (default: the target block's database).
        scratch_database: scratch name (default ``<database>_drill_<UTC time>``); must not exist.
        no_owner: skip ownership/privileges (a DR server without the source's roles).
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures.
    """
    blk = PostgresTarget.load(target)
    source = database or blk.database
    scratch = scratch_database or scratch_name(source)
    try:
        if scratch == source:
            raise UsageError(f"the scratch database must not be {source}, the database under drill")
        pg = blk.pg_target(scratch)
        repo = SeedvaultRepository.load(repository).open(SeedvaultEncryptionKey.load(key).key_source())
        preflight(quote(repo), quote(pg), backup=False)
        backup_id = latest_backup(quote(repo), source)
        checked = verify_backup_task(quote(repo), backup_id)
        options = RestoreOptions(no_owner=no_owner, checksums=True)
        report = restore_task(quote(repo), backup_id, quote(pg), quote(options), purpose="drill")
        dropped = drop_database(quote(pg), scratch, protect=source)
        finished = repo.manifest(backup_id)["finished"]
    except SeedvaultError as exc:
        failure = operator_error(exc)
        publish_failure_artifact("dr-drill", source, failure.message)
        raise failure from None
    made = datetime.strptime(finished, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    age = round((datetime.now(UTC) - made).total_seconds() / 3600, 2)
    extra = [
        ("backup finished", finished),
        ("backup age h", age),
        ("verified bytes", checked["bytes"]),
        ("scratch database", f"{scratch} (dropped)"),
        ("drop s", dropped),
    ]
    publish_drill_artifact(source, report, extra)
    get_run_logger().info(
        "DR drill of %s passed: backup %s (%.1f h old), %d tables, %d rows, %d checksums verified",
        source,
        backup_id,
        age,
        report["tables_verified"],
        report["rows_verified"],
        report["checksums_verified"],
    )
    return {**report, "source": source, "scratch_database": scratch, "backup_age_hours": age, "verify": checked}
