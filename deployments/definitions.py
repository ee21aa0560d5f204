"""The scheduled deployments: a full logical backup every night, a DR drill every month, both in UTC.

=========================  ====================  ===================================================
deployment                 schedule (UTC)        flow
=========================  ====================  ===================================================
backup-postgres/nightly    ``0 2 * * *``         full logical backup (checksums on), verified, artifact
dr-drill/monthly           ``0 4 1 * *``         latest backup -> scratch DB, counts + checksums, drop
=========================  ====================  ===================================================

TODO(WAL archiving issue): the old scripts also took an "incremental" every 15 minutes. It is replaced by
continuous WAL archiving (point-in-time recovery) in a later issue, so there is deliberately no 15-minute
deployment here: repeating a full logical dump every 15 minutes would be a fake incremental.

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
from flows.dr_drill import dr_drill_flow

TIMEZONE = "UTC"
NIGHTLY_BACKUP = "nightly"
NIGHTLY_BACKUP_CRON = "0 2 * * *"
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
    notify_block: str | None = None,
) -> list[RunnerDeployment]:
    """The two deployments for one database.

    Args:
        repository, key, target: names of the saved seedvault blocks.
        database: the database to back up and drill (default: the target block's database).
        drill_target: the ``PostgresTarget`` block of the server to drill on (default: ``target``, the
            drill then restores into a scratch database next to the source).
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures.
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
    return [backup, drill]
