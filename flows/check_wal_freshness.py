"""``check-wal-freshness``: every 5 minutes, fail loudly when WAL archiving fails, lags or left a hole.

PostgreSQL retries a failing ``archive_command`` for ever without telling anyone; meanwhile the recovery
point stops moving and ``pg_wal`` fills up. This flow turns that into a *failed run*, so the failure hook
(``notify_block`` / ``SEEDVAULT_NOTIFY_BLOCK``) and the server-side failure automation of
:mod:`flows.failures` notify exactly as for a failed backup. The engine's check
(:mod:`seedvault.ops.wal_freshness`, also ``seedvault check wal-freshness``) decides; this flow loads the
blocks, publishes the report as an artifact (fresh or stale) and raises the first problem's one-line message.

The run has a timeout shorter than its schedule's interval, so a check that hangs (storage not answering)
fails and notifies instead of silently overlapping the next one.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from blocks import PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from seedvault.errors import SeedvaultError
from seedvault.ops.wal_freshness import DEFAULT_MAX_LAG, FreshnessReport
from tasks.reports import publish_freshness_artifact, publish_server_failure_artifact
from tasks.status import publish_status
from tasks.wal import wal_freshness_task

CHECK_TIMEOUT_SECONDS = 240  # below the 5-minute schedule interval


@flow(
    name="check-wal-freshness",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
    timeout_seconds=CHECK_TIMEOUT_SECONDS,
)
def check_wal_freshness_flow(
    repository: str,
    key: str,
    target: str,
    max_lag: float = DEFAULT_MAX_LAG,
    notify_block: str | None = None,
) -> dict[str, Any]:
    """Check that the target server's WAL reaches the repository on time and without holes.

    Args:
        repository: name of the saved ``SeedvaultRepository`` block the server archives into.
        key: name of the saved ``SeedvaultEncryptionKey`` block (to read the catalog and manifests).
        target: name of the ``PostgresTarget`` block of the archiving server (``pg_monitor`` lets the check
            see how long completed WAL has waited; without it the lag is estimated).
        max_lag: seconds completed WAL may wait for archiving before the run fails.
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures
            (default: ``SEEDVAULT_NOTIFY_BLOCK``).
    """
    report: FreshnessReport | None = None
    pg = None
    try:
        pg = load_block(PostgresTarget, target).pg_target()
        repo = load_block(SeedvaultRepository, repository).open(load_block(SeedvaultEncryptionKey, key).key_source())
        report = wal_freshness_task(quote(repo), quote(pg), max_lag)
        publish_freshness_artifact(report.as_dict(), target)
        report.raise_for_problems()
    except SeedvaultError as exc:
        failure = operator_error(exc)
        if report is None:
            where = pg.display() if pg is not None else target
            publish_server_failure_artifact("wal-freshness", target, where, failure.message)
        raise failure from None
    get_run_logger().info("%s", report.summary())
    return report.as_dict()
