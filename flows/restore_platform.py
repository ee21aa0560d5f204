"""``restore-platform``: both stores to one group's moment (the CLI twin: ``seedvault restore platform``).

PostgreSQL is recovered by PITR to the group's restore point into a *new* data directory (it touches nothing
live); Neo4j is restored from the group's member with a verified safety copy first. Both are verified as the
group recorded them; a group whose WAL has a gap is refused before anything is touched, naming the segment.
Never retried: see tasks.neo4j on why a restore is not retried blindly.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from blocks import Neo4jTarget, PostgresTarget
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from flows.repositories import open_for_restore
from seedvault.errors import SeedvaultError
from tasks.platform import publish_platform_restore_artifact, restore_platform_task
from tasks.reports import publish_failure_artifact
from tasks.status import publish_status


@flow(
    name="restore-platform",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
)
def restore_platform_flow(
    repository: str,
    key: str,
    data_dir: str,
    neo4j_target: str | None = None,
    target: str | None = None,
    group_id: str | None = None,
    label: str | None = None,
    neo4j_database: str | None = None,
    port: int | None = None,
    archive_mode: str = "preserve",
    safety_copy: bool = True,
    replica: str | None = None,
    notify_block: str | None = None,
) -> dict[str, Any]:
    """Restore group ``group_id`` (default: the newest complete one); PostgreSQL into ``data_dir``.

    Args:
        data_dir: new PostgreSQL data directory (absent or empty) on the worker.
        neo4j_target: ``Neo4jTarget`` block of the graph to restore into; None: PostgreSQL only.
        target: the PostgreSQL server's ``PostgresTarget`` block: the recovered copy keeps its users, and this
            password is how the flow verifies it (None: PGPASSFILE/PGPASSWORD on the worker).
        archive_mode: ``preserve`` (the recovered server archives, a new timeline) or ``off``.
        safety_copy: dump the current Neo4j database first (kept as a backup; put back if the restore fails).
        replica: name of the second ``SeedvaultRepository`` block (the ``replicate`` flow's destination): read
            from it when this repository is unreachable, saying so in the log and the result (empty: never).
    """
    try:
        opened = open_for_restore(repository, key, replica)
        repo, repo_block = opened.repo, opened.block
        n_blk = load_block(Neo4jTarget, neo4j_target) if neo4j_target else None
        password = load_block(PostgresTarget, target).pg_target().password if target else None
        kwargs = dict(group_id=group_id, label=label, port=port, archive_mode=archive_mode, safety_copy=safety_copy,
                      password=quote(password))  # fmt: skip
        if n_blk is None:
            report = restore_platform_task(quote(repo), quote(repo_block.settings()), None, data_dir, **kwargs)
        else:
            with n_blk.open_job(neo4j_database) as job:
                report = restore_platform_task(quote(repo), quote(repo_block.settings()), quote(job), data_dir,
                                               **kwargs)  # fmt: skip
    except SeedvaultError as exc:
        failure = operator_error(exc)
        publish_failure_artifact("restore-platform", group_id or label or "platform", failure.message)
        raise failure from None
    report["read_from_replica"] = opened.note
    publish_platform_restore_artifact(report)
    get_run_logger().info("restored platform group %s; postgres on port %s", report["group_id"],
                          report["postgres"]["port"])  # fmt: skip
    return report
