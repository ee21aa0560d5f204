"""The scheduled deployments, all in UTC: nightly logical backup, daily base backup, WAL freshness, DR drill.

==================================  =================  =================================================
deployment                          schedule (UTC)     flow
==================================  =================  =================================================
backup-postgres/nightly             ``0 2 * * *``      full logical backup (checksums on), verified, artifact
backup-postgres-base/daily          ``0 1 * * *``      physical base backup (pg_basebackup), verified, artifact
check-wal-freshness/every-5-minutes ``*/5 * * * *``    WAL archiving fails, lags or has a hole -> failed run
dr-drill/monthly                    ``0 4 1 * *``      latest backup -> scratch DB, counts + checksums, drop
==================================  =================  =================================================

Why there is no 15-minute "incremental" (the old scripts took one): the server archives its WAL
continuously instead. ``archive_command = 'seedvault wal-push %p'`` pushes every completed 16 MiB segment
the moment PostgreSQL completes it, and ``archive_timeout = 60s`` (seedvault's recommended setting;
PostgreSQL's own default, 0, never switches a partly filled segment) completes one at least every minute
while anything is written. So a point-in-time recovery loses at most about a minute of commits, not 15
minutes, and can stop at any moment in between. The daily base backup bounds how much WAL a recovery
replays (and must keep). Archiving can fail quietly (PostgreSQL just retries), so ``check-wal-freshness``
runs every 5 minutes and fails, notifying like any failed seedvault run, when WAL has waited longer than
``max_lag`` (default 300 s) or the repository lacks a segment since the last base backup. The base backup
runs at 01:00, before the 02:00 logical backup, so the two never load the server at the same time.

Parameters are block *names* only; the secrets stay in the blocks. Two ways to register:

* ``python -m deployments.serve --repository R --key K --target T`` (this module's :func:`build`; a long-running
  process runs the scheduled flows, no work pool needed), or
* ``prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml`` for a process work pool and workers.
"""

from __future__ import annotations

from typing import Any

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.backup_postgres import backup_postgres_flow
from flows.backup_postgres_base import backup_postgres_base_flow
from flows.check_wal_freshness import check_wal_freshness_flow
from flows.dr_drill import dr_drill_flow

TIMEZONE = "UTC"
NIGHTLY_BACKUP = "nightly"
NIGHTLY_BACKUP_CRON = "0 2 * * *"
DAILY_BASE_BACKUP = "daily"
DAILY_BASE_BACKUP_CRON = "0 1 * * *"
WAL_FRESHNESS = "every-5-minutes"
WAL_FRESHNESS_CRON = "*/5 * * * *"
MONTHLY_DRILL = "monthly"
MONTHLY_DRILL_CRON = "0 4 1 * *"
TAGS = ["seedvault"]


def build(
    repository: str,
    key: str,
    target: str,
    *,
    database: str | None = None,
    drill_target: str | None = None,
    base_target: str | None = None,
    notify_block: str | None = None,
    wal: bool = True,
) -> list[RunnerDeployment]:
    """The deployments for one server: logical backup, DR drill and (with ``wal``) base backup + freshness.

    Args:
        repository, key, target: names of the saved seedvault blocks.
        database: the database to back up and drill (default: the target block's database).
        drill_target: the ``PostgresTarget`` block of the server to drill on (default: ``target``, the
            drill then restores into a scratch database next to the source).
        base_target: the ``PostgresTarget`` block for base backups and the freshness check, when it needs
            another role (REPLICATION, pg_monitor) than the logical backup (default: ``target``).
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures.
        wal: also schedule the base backup and the freshness check (the server archives its WAL with
            ``seedvault wal-push``); without archiving they would only fail.
    """
    common: dict[str, Any] = {"repository": repository, "key": key, "notify_block": notify_block}
    backup = backup_postgres_flow.to_deployment(
        name=NIGHTLY_BACKUP,
        schedules=[Cron(NIGHTLY_BACKUP_CRON, timezone=TIMEZONE)],
        parameters={**common, "target": target, "database": database, "checksums": True, "verify": True},
        tags=[*TAGS, "backup"],
        description="Nightly full logical backup (pg_dump from an exported snapshot), verified, with an artifact.",
    )
    drill = dr_drill_flow.to_deployment(
        name=MONTHLY_DRILL,
        schedules=[Cron(MONTHLY_DRILL_CRON, timezone=TIMEZONE)],
        parameters={**common, "target": drill_target or target, "database": database},
        tags=[*TAGS, "dr-drill"],
        description="Monthly DR drill: restore the latest backup into a scratch database, verify, drop it.",
    )
    if not wal:
        return [backup, drill]
    base = backup_postgres_base_flow.to_deployment(
        name=DAILY_BASE_BACKUP,
        schedules=[Cron(DAILY_BASE_BACKUP_CRON, timezone=TIMEZONE)],
        parameters={**common, "target": base_target or target, "verify": True},
        tags=[*TAGS, "backup", "wal"],
        description="Daily physical base backup (pg_basebackup; WAL archived continuously), verified, artifact.",
    )
    freshness = check_wal_freshness_flow.to_deployment(
        name=WAL_FRESHNESS,
        schedules=[Cron(WAL_FRESHNESS_CRON, timezone=TIMEZONE)],
        parameters={**common, "target": base_target or target},
        tags=[*TAGS, "wal"],
        description="Every 5 minutes: fail (and notify) when WAL archiving fails, lags or left a hole.",
    )
    return [backup, drill, base, freshness]
