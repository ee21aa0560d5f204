"""``replicate``: copy every backup and WAL file to the second repository (hourly), then say how far behind it is.

The engine does the copying and the checking (:mod:`seedvault.ops.replicate`: manifests last, each object
verified on arrival, the destination's own policy and lock); this flow loads both repository blocks (the
destination has its own credentials, retention and Object Lock settings), runs it as one retried task (a rerun
converges, so retrying the whole copy after a storage hiccup is safe), compares the two afterwards and publishes
``seedvault-replication`` (always that key): what was copied, what the replica still lacks and the lag. A copy
that was wrong twice fails the run (``replication-failed``); a lag over ``replication_max_lag`` of the source
block's ``status`` table fails it too (``replication-lag``), once everything that could be copied was.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from blocks import SeedvaultEncryptionKey, SeedvaultRepository
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from seedvault.errors import ReplicationIncomplete, ReplicationLagging, SeedvaultError
from seedvault.ops.replicate import replicate
from seedvault.ops.replication_status import ReplicationStatus, replication_status
from seedvault.ops.status import StatusPolicy
from seedvault.repository import Repository
from seedvault.retention import Policies, policies_of
from seedvault.units import human_bytes, human_seconds
from tasks.metrics import pushes_metrics
from tasks.postgres import transient_only
from tasks.status import publish_status

ARTIFACT = "seedvault-replication"


@task(name="replicate", retries=2, retry_delay_seconds=[30, 120], retry_condition_fn=transient_only,
      cache_policy=NO_CACHE, persist_result=False)  # fmt: skip
def replicate_task(src: Repository, dst: Repository, policies: Policies, include_wal: bool) -> dict[str, Any]:
    report = replicate(src, dst, policies, include_wal=include_wal, progress=get_run_logger().info)
    return report.as_dict()


@flow(
    name="replicate",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
)
@pushes_metrics
def replicate_flow(
    repository: str, key: str, replica: str, include_wal: bool = True, notify_block: str | None = None
) -> dict[str, Any]:
    """Copy what the replica lacks (and its own retention keeps) from ``repository`` to ``replica``.

    Args:
        repository: name of the source ``SeedvaultRepository`` block.
        key: name of the ``SeedvaultEncryptionKey`` block (the copies open with the same key).
        replica: name of the destination ``SeedvaultRepository`` block (its retention, storage class and Object
            Lock apply there; its credentials may be another account's).
        include_wal: also copy the archived WAL (PITR from the replica needs it).
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures.
    """
    try:
        src_block = load_block(SeedvaultRepository, repository)
        dst_block = load_block(SeedvaultRepository, replica)
        key_source = load_block(SeedvaultEncryptionKey, key).key_source()
        src, dst = src_block.open(key_source), dst_block.open(key_source, create=True)
        policies = policies_of(dst_block.settings())
        result = replicate_task(quote(src), quote(dst), quote(policies), include_wal)
        max_lag = StatusPolicy.from_settings(src_block.settings()).replication_max_lag
        status = replication_status(src, dst, policies, max_lag=max_lag)
        result["status"] = status.as_dict()
        _publish(result, status)
        if not result["ok"]:
            raise ReplicationIncomplete(f"{len(result['failed'])} item(s) not replicated: {result['failed'][0]}")
        if status.alerting:
            raise ReplicationLagging(status.line())
    except SeedvaultError as exc:
        raise operator_error(exc) from None
    return result


def _publish(result: dict[str, Any], status: ReplicationStatus) -> None:
    lines = [
        f"# Replication to {result['destination']}",
        "",
        "| | |",
        "|---|---|",
        f"| result | {'ok' if result['ok'] else 'FAILED: ' + result['failed'][0]} |",
        f"| from | {result['source']} |",
        f"| copied | {len(result['copied_backups'])} backups, {result['wal_copied']} WAL files, "
        f"{human_bytes(result['bytes_copied'])} ({result['server_side']} server-side) |",
        f"| already there | {result['present_backups']} backups, {result['wal_present']} WAL files |",
        f"| not wanted by the replica's policy | {len(result['not_wanted'])} backups, {result['wal_not_wanted']} WAL |",
        f"| copied again after a wrong arrival | {len(result['retried'])} |",
        f"| still lacking | {len(status.backups_lacking)} backups, "
        f"{sum(int(w['files']) for w in status.wal_lacking.values())} WAL files ({human_bytes(status.lag_bytes)}) |",
        f"| lag | {human_seconds(status.lag_seconds)} (alert above {human_seconds(status.max_lag_seconds)}) |",
        f"| took | {human_seconds(result['seconds'])} |",
    ]
    create_markdown_artifact("\n".join(lines), key=ARTIFACT, description=f"replication to {result['destination']}")
