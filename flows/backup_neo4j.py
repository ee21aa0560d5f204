"""``backup-neo4j``: one Neo4j backup (offline dump, Enterprise online FULL/DIFF, or Bolt export), verified.

Shape of a run::

    backup-neo4j                         flow: blocks by name, preflight, backup, verify, artifact
    ├── neo4j-preflight                  task: key, repository, neo4j-admin through the prefix, edition
    ├── backup-neo4j                     task: one engine call (stop, dump -> compress -> encrypt -> storage,
    │                                    start again, whatever happened); retried whole (``retries``) only
    │                                    for what may heal by itself (see tasks.neo4j)
    └── verify-backup                    task: read every byte back through the authenticators

Modes: ``dump`` stops the database (stop/start commands, or STOP/START DATABASE over Bolt on Enterprise)
and records the downtime; ``online`` (Enterprise) backs up the running database, ``FULL`` starting a chain,
``DIFF`` extending the newest chain (only the difference is stored), ``AUTO`` a DIFF when a chain exists;
``export`` is the logical Bolt export. With a Bolt URI in the target block, node counts per label and
relationship counts per type are recorded (a restore compares them); without one they are not.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from blocks import Neo4jTarget, SeedvaultEncryptionKey, SeedvaultRepository
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from seedvault.errors import SeedvaultError
from tasks.metrics import pushes_metrics
from tasks.neo4j import backup_neo4j_task, neo4j_preflight
from tasks.reports import publish_neo4j_backup_artifact, publish_neo4j_failure_artifact
from tasks.retention import prune_after_backup
from tasks.status import publish_status, size_anomaly_failure
from tasks.verify import verify_backup_task


@flow(
    name="backup-neo4j",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
)
@pushes_metrics
def backup_neo4j_flow(
    repository: str,
    key: str,
    target: str,
    database: str | None = None,
    mode: str = "dump",
    backup_type: str = "FULL",
    label: str | None = None,
    staging: bool = False,
    verify: bool = True,
    prune: bool = True,
    retries: int = 1,
    retry_delay_seconds: float = 60,
    notify_block: str | None = None,
) -> dict[str, Any]:
    """Back up ``database`` (default: the target block's) into the repository; returns the summary.

    Args:
        repository: name of a saved ``SeedvaultRepository`` block.
        key: name of a saved ``SeedvaultEncryptionKey`` block.
        target: name of a saved ``Neo4jTarget`` block.
        database: the Neo4j database, if not the block's.
        mode: ``dump`` (offline, any edition), ``online`` (Enterprise) or ``export`` (Bolt).
        backup_type: online backups: ``FULL``, ``DIFF`` (needs a FULL) or ``AUTO`` (DIFF when a chain exists).
        label: backup name label (default: ``neo4j-<database>``).
        staging: dump into a staging file on the Neo4j side even where neo4j-admin streams (5.x).
        verify: read the whole backup back after writing it.
        prune: after the verify passed, apply the repository block's retention policy (``prune`` flow).
        retries: how often a failed backup is taken again from scratch (neo4j-admin or storage failing);
            for a dump each attempt is another downtime window. Never for configuration errors, nor when
            the database could not be started again.
        retry_delay_seconds: pause before each such retry (and the preflight's, which has its own policy).
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures
            (default: ``SEEDVAULT_NOTIFY_BLOCK``).
    """
    name = database or "(the block's database)"  # for the failure artifact, if the block cannot be loaded
    try:
        repo_block = load_block(SeedvaultRepository, repository)
        blk = load_block(Neo4jTarget, target)
        name = database or blk.database
        with blk.open_job(name) as job:
            repo = repo_block.open(load_block(SeedvaultEncryptionKey, key).key_source(), create=True)
            neo4j_preflight(quote(repo), quote(job), mode=mode, backup=True)
            backup = backup_neo4j_task.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
            summary = backup(
                quote(repo),
                quote(repo_block.settings()),
                quote(job),
                mode=mode,
                backup_type=backup_type,
                label=label,
                staging=staging,
            )
            if verify:
                summary["verify"] = verify_backup_task(quote(repo), summary["id"])
    except SeedvaultError as exc:
        failure = operator_error(exc)
        publish_neo4j_failure_artifact("backup", target, name, failure.message)
        raise failure from None
    publish_neo4j_backup_artifact(summary, repo_block.url, target, blk.display(name))
    anomaly = size_anomaly_failure(repo, repo_block.settings(), summary["id"])
    if anomaly is not None:  # kept and verified, but not pruned on its strength: the run fails so somebody looks
        publish_neo4j_failure_artifact("backup", target, name, anomaly.message)
        raise anomaly
    if prune and verify:  # last, and only after this backup passed verification
        summary["prune"] = prune_after_backup(repo, repo_block, summary["id"])
    counts = summary.get("counts")
    get_run_logger().info(
        "backup %s of neo4j %s (%s): %d bytes raw -> %d stored, %s, %s",
        summary["id"],
        name,
        summary["mode"] + (f" {summary['backup_type']}" if summary.get("backup_type") else ""),
        summary["raw_size"],
        summary["stored_size"],
        "no downtime" if summary["downtime_seconds"] is None else f"downtime {summary['downtime_seconds']:.3f} s",
        "no counts (no Bolt URI)"
        if counts is None
        else f"{counts.get('nodes')} nodes, {counts.get('relationships')} relationships",
    )
    return summary
