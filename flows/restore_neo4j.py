"""``restore-neo4j``: restore a backup (by id, or the latest of a database) over a Neo4j database.

The engine protects the live database (:mod:`seedvault.ops.neo4j_restore`): it authenticates the backup,
dumps the current database as a safety copy and verifies that copy, then stops, loads/restores and starts
the database, and compares counts over Bolt when the block has a URI. When anything fails after the safety
copy it puts the previous database back from it, and the error says so.

Shape of a run::

    restore-neo4j                        flow: blocks by name, lookup, verify, restore, artifact
    ├── latest-neo4j-backup              task: without ``backup_id``: the newest backup of the database
    ├── neo4j-preflight                  task: key, repository, neo4j-admin (nothing touched yet; retried)
    ├── verify-backup (per chain link)   task: every byte read back BEFORE the database is stopped
    └── restore-neo4j                    task: the engine call; never retried (tasks.neo4j says why)

A failed run names the reason and, when it got that far, the safety copy that is back in place (or, if
even that failed, the safety copy to restore by hand: ``seedvault restore neo4j <id>``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from blocks import Neo4jTarget
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from flows.repositories import open_for_restore
from seedvault.errors import BackupNotFound, SeedvaultError
from seedvault.ops.neo4j_backup import KIND, chain_of
from tasks.neo4j import latest_neo4j_backup, neo4j_preflight, restore_neo4j_task
from tasks.reports import publish_neo4j_failure_artifact, publish_neo4j_restore_artifact
from tasks.status import publish_status
from tasks.verify import verify_backup_task


@flow(
    name="restore-neo4j",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
)
def restore_neo4j_flow(
    repository: str,
    key: str,
    target: str,
    database: str | None = None,
    backup_id: str | None = None,
    source_database: str | None = None,
    safety_copy: bool = True,
    restore_until: str | None = None,
    verify_first: bool = True,
    staging: bool = False,
    replica: str | None = None,
    notify_block: str | None = None,
) -> dict[str, Any]:
    """Restore over ``database`` (default: the target block's); returns the restore report.

    Args:
        repository, key, target: names of saved seedvault blocks (the target is the Neo4j to restore into).
        database: the database to restore over (or to create, Enterprise 5.x with a Bolt URI).
        backup_id: the backup to restore; default: the latest backup of ``source_database``
            (safety copies of earlier restores are never picked as "latest").
        source_database: whose latest backup to take (default: ``database``).
        safety_copy: dump and verify the current database first, and put it back if the restore fails.
            Declining it means a failed restore leaves whatever neo4j-admin left.
        restore_until: online backups on 5.x: restore to this time or transaction id (``--restore-until``).
        verify_first: read the backup (and for an online DIFF its whole chain) back before stopping anything.
        staging: load from a staging file on the Neo4j side even where neo4j-admin streams (5.x).
        replica: name of the second ``SeedvaultRepository`` block (the ``replicate`` flow's destination): read
            from it when this repository is unreachable, saying so in the log and the result (empty: never).
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures.
    """
    name = database or "(the block's database)"  # for the failure artifact, if the block cannot be loaded
    try:
        blk = load_block(Neo4jTarget, target)
        name = database or blk.database
        with blk.open_job(name) as job:
            opened = open_for_restore(repository, key, replica)
            repo, repo_block = opened.repo, opened.block
            if backup_id is None:
                backup_id = latest_neo4j_backup(quote(repo), source_database or name)
            body = repo.manifest(backup_id)  # authenticated: the key fits
            src = body.get("source", {})
            if body.get("kind") != KIND:
                raise BackupNotFound(f"backup {backup_id} is not a Neo4j backup (kind {body.get('kind')})")
            neo4j_preflight(quote(repo), quote(job), mode=src.get("mode"), backup=False)
            verify_seconds = None
            if verify_first:
                links = [backup_id]
                if src.get("mode") == "online" and body.get("parent"):
                    links = [bid for bid, _ in chain_of(repo, src["database"], upto=backup_id)]
                verify_seconds = round(sum(verify_backup_task(quote(repo), bid)["seconds"] for bid in links), 3)
            report = restore_neo4j_task(
                quote(repo),
                quote(repo_block.settings()),
                backup_id,
                quote(job),
                safety_copy=safety_copy,
                until=restore_until,
                staging=staging,
            )
            report["verify_seconds"] = verify_seconds
            report["read_from_replica"] = opened.note
    except SeedvaultError as exc:
        failure = operator_error(exc)
        publish_neo4j_failure_artifact("restore", target, name, failure.message)
        raise failure from None
    publish_neo4j_restore_artifact(report, target, blk.display(name))
    get_run_logger().info(
        "restored %s into neo4j %s (%s); safety copy %s",
        backup_id,
        name,
        "counts verified" if report["counts"] is not None else "counts not checked: no Bolt URI",
        report["safety_copy"] or "declined",
    )
    return report
