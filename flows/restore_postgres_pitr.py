"""``restore-postgres-pitr``: point-in-time recovery into a new data directory (the CLI twin: ``seedvault
restore postgres-pitr``), for the UI's on-demand deployment.

The plan comes first (base backup, timeline, every WAL segment to the target present: a gap is refused naming
the segment before anything is laid out); the copy is recovered on the worker into ``data_dir`` (absent or
empty), promoted, and left running on its port for the operator (or stopped with ``stop_after``). Never
retried: a recovery that failed says why; running it again blindly would only hide that.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from blocks import PostgresTarget
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from flows.repositories import open_for_restore
from seedvault.errors import SeedvaultError
from seedvault.ops.postgres_pitr import parse_target, restore_pitr
from seedvault.repository import Repository
from tasks.reports import _rows, publish_failure_artifact


@task(name="restore-postgres-pitr", cache_policy=NO_CACHE, persist_result=False)
def pitr_task(repo: Repository, target: Any, data_dir: str, **kwargs: Any) -> dict[str, Any]:
    return restore_pitr(repo, target, data_dir, **kwargs).as_dict()


@flow(
    name="restore-postgres-pitr",
    on_completion=[notify_recovered],
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
    persist_result=False,
)
def restore_postgres_pitr_flow(
    repository: str,
    key: str,
    data_dir: str,
    target: str | None = None,
    to_time: str | None = None,
    to_lsn: str | None = None,
    to_name: str | None = None,
    latest: bool = False,
    exclusive: bool = False,
    backup_id: str | None = None,
    system_id: str | None = None,
    timeline: int | None = None,
    port: int | None = None,
    archive_mode: str = "preserve",
    stop_after: bool = False,
    replica: str | None = None,
    notify_block: str | None = None,
) -> dict[str, Any]:
    """Recover PostgreSQL to one target into ``data_dir`` on the worker; returns the recovery report.

    Args:
        data_dir: new data directory (absent or empty), writable by the server's OS user.
        target: the source server's ``PostgresTarget`` block: the recovered copy keeps its users, and its
            password is how the flow follows the recovery (None: PGPASSFILE/PGPASSWORD on the worker).
        to_time / to_lsn / to_name / latest: exactly one target (ISO time, LSN, restore point name, or
            everything archived).
        exclusive: stop just before the target instead of after it.
        backup_id: base backup to start from (default: the newest that ends before the target).
        archive_mode: ``preserve`` (the copy archives on a new timeline) or ``off`` (a look-only copy).
        stop_after: stop the recovered server once promoted (default: left running for the operator).
        replica: name of the second ``SeedvaultRepository`` block (the ``replicate`` flow's destination): read
            from it when this repository is unreachable, saying so in the log and the result (empty: never);
            restore_command then reads the replica too (the host's seedvault config needs its [replica] table).
    """
    try:
        opened = open_for_restore(repository, key, replica)
        repo = opened.repo
        password = load_block(PostgresTarget, target).pg_target().password if target else None
        goal = parse_target(to_time=to_time, to_lsn=to_lsn, to_name=to_name, latest=latest, immediate=False,
                              exclusive=exclusive)  # fmt: skip
        report = pitr_task(quote(repo), quote(goal), data_dir, port=port, backup_id=backup_id, system_id=system_id,
                           timeline=timeline, archive_mode=archive_mode, stop_after=stop_after,
                           password=quote(password))  # fmt: skip
    except SeedvaultError as exc:
        failure = operator_error(exc)
        publish_failure_artifact("restore-pitr", system_id or "postgres", failure.message)
        raise failure from None
    rows = _rows([
        ("base backup", report["plan"].get("backup_id")),
        ("read from the replica", opened.note),
        ("system", report["plan"].get("system_id")),
        ("recovered to", report.get("stop_reason") or "end of archived WAL"),
        ("timeline / LSN", f"{report['timeline']} / {report['lsn']}"),
        ("data directory", report["data_dir"]),
        ("server", f"port {report['port']} ({'running' if report['running'] else 'stopped'})"),
    ])  # fmt: skip
    create_table_artifact(key="seedvault-restore-pitr", table=rows, description="Point-in-time recovery")
    get_run_logger().info("recovered %s on port %s", report["data_dir"], report["port"])
    report["read_from_replica"] = opened.note
    return report
