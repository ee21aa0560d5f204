"""The scheduled deployments, all in UTC: PostgreSQL logical and base backups, WAL freshness, DR drill; Neo4j.

============================================  ====================  ================================================
deployment                                    schedule (UTC)        flow
============================================  ====================  ================================================
backup-postgres/nightly-0200-utc              ``0 2 * * *``         full logical backup (checksums on), verified
backup-postgres-base/daily-0100-utc           ``0 1 * * *``         physical base backup (pg_basebackup), verified
check-wal-freshness/every-5-minutes           ``*/5 * * * *``       WAL archiving fails, lags, has a hole -> failed
dr-drill/monthly-1st-0400-utc                 ``0 4 1 * *``         latest backup -> scratch DB, counts, drop; with
                                                                    ``platform``: newest group -> scratch PITR +
                                                                    scratch Neo4j, verified, RTO/RPO, removed
backup-platform/daily-0300-utc                ``0 3 * * *``         with ``platform``: Neo4j backup + PostgreSQL
                                                                    restore point at its moment (one group)
backup-neo4j/nightly-0200-utc                 ``0 2 * * *``         Neo4j full: offline dump, or (incremental on)
                                                                    an online FULL; verified
backup-neo4j/every-15-minutes                 ``5-59/15 * * * *``   Enterprise, on request only: online AUTO (a DIFF
                                                                    of the night's chain); verified
prune/daily-0330-utc                          ``30 3 * * *``        retention policy of the repository block
verify-repository/weekly-sample-sun-0500-utc  ``0 5 * * 0``         a rotating 25 % of all data objects (every
                                                                    object read within 4 weeks), every manifest
verify-repository/monthly-all-2nd-0500-utc    ``0 5 2 * *``         every byte of every backup
verify-repository/daily-wal-0600-utc          ``0 6 * * *``         every archived WAL segment from the oldest base
                                                                    backup's start (with WAL archiving only)
restore-postgres/on-demand                    on demand             restore a logical backup (latest by default)
restore-postgres-pitr/on-demand               on demand             point-in-time recovery into a new data directory
restore-neo4j/on-demand                       on demand             restore a Neo4j backup after a verified safety copy
restore-platform/on-demand                    on demand             with ``platform``: both stores to one group
replicate/hourly-at-45-utc                    ``45 * * * *``        with ``replica``: copy what the second repository
                                                                    lacks (its own policy), verified; lag alert
prune/replica-daily-0345-utc                  ``45 3 * * *``        with ``replica``: the replica's own retention
============================================  ====================  ================================================

With ``replica`` (a second repository block: another region, other credentials, its own retention and Object
Lock), the restores and the drill get ``replica`` as a parameter too: they read from it when the first
repository cannot be reached, and say so.

Every backup flow also ends with a prune, once its own verify passed; ``prune/daily-0330-utc`` covers days whose
backups failed (nothing else would apply the policy then) and is where a dry run is read in the UI.

Why PostgreSQL has no 15-minute "incremental" (the old scripts took one): the server archives its WAL
continuously instead. ``archive_command = 'seedvault wal-push %p'`` pushes every completed 16 MiB segment
the moment PostgreSQL completes it, and ``archive_timeout = 60s`` (seedvault's recommended setting;
PostgreSQL's own default, 0, never switches a partly filled segment) completes one at least every minute
while anything is written. So a point-in-time recovery loses at most about a minute of commits, not 15
minutes, and can stop at any moment in between. The daily base backup bounds how much WAL a recovery
replays (and must keep). Archiving can fail quietly (PostgreSQL just retries), so ``check-wal-freshness``
runs every 5 minutes and fails, notifying like any failed seedvault run, when WAL has waited longer than
``max_lag`` (default 300 s) or the repository lacks a segment since the last base backup. The base backup
runs at 01:00, before the 02:00 logical backup, so the two never load the server at the same time.

Neo4j has no WAL archive to lean on, so the platform's "incremental every 15 minutes" is kept there, as
Enterprise online backups: ``neo4j_incremental=True`` (``--neo4j-incremental``) makes the nightly an online
FULL, which starts a new chain each night without downtime (so a chain never grows past a day, 96 links),
and adds ``backup-neo4j/every-15-minutes``, an online ``AUTO`` backup: a DIFF of the newest chain that stores
only the difference (a FULL when no chain exists yet, e.g. right after installation). It runs at :05, :20,
:35 and :50, never at 02:00 with the nightly FULL, and at most one run at a time (``CANCEL_NEW``: a run due
while the previous one is still going is cancelled, not queued). Without it (Community, or not requested)
the nightly is an offline dump, with its downtime recorded in the artifact.

With ``platform=True`` (both stores, WAL archiving) the platform gets one recovery point a day:
``backup-platform/daily-0300-utc`` at 03:00, after the 01:00 base backup (a group needs one that ends before its
restore point) and clear of the 02:00 nightlies (its Neo4j side is another dump, another short
downtime), before the 03:30 prune. The monthly drill then drills the newest group (``mode="platform"``): the
time series by PITR into a scratch data directory under ``scratch_parent`` on the worker, the graph into the
scratch Neo4j instance of ``neo4j_scratch_target`` made and removed by ``neo4j_scratch_setup`` /
``neo4j_scratch_teardown``; its RTO and RPO figures land in the artifact and the repository's audit log.

Parameters are block *names* only; the secrets stay in the blocks. Two ways to register:

* ``python -m deployments.serve --repository R --key K --target T [--neo4j-target N]`` (this module's
  :func:`build`; a long-running process runs the scheduled flows, no work pool needed), or
* ``prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml`` for a process work pool and workers.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.backup_neo4j import backup_neo4j_flow
from flows.backup_platform import backup_platform_flow
from flows.backup_postgres import backup_postgres_flow
from flows.backup_postgres_base import backup_postgres_base_flow
from flows.check_wal_freshness import check_wal_freshness_flow
from flows.dr_drill import dr_drill_flow
from flows.prune import prune_flow
from flows.replicate import replicate_flow
from flows.restore_neo4j import restore_neo4j_flow
from flows.restore_platform import restore_platform_flow
from flows.restore_postgres import restore_postgres_flow
from flows.restore_postgres_pitr import restore_postgres_pitr_flow
from flows.verify_repository import verify_repository_flow

TIMEZONE = "UTC"
NIGHTLY_BACKUP = "nightly-0200-utc"
NIGHTLY_BACKUP_CRON = "0 2 * * *"
DAILY_BASE_BACKUP = "daily-0100-utc"
DAILY_BASE_BACKUP_CRON = "0 1 * * *"
WAL_FRESHNESS = "every-5-minutes"
WAL_FRESHNESS_CRON = "*/5 * * * *"
MONTHLY_DRILL = "monthly-1st-0400-utc"
MONTHLY_DRILL_CRON = "0 4 1 * *"
DAILY_PLATFORM = "daily-0300-utc"
DAILY_PLATFORM_CRON = "0 3 * * *"  # after the 01:00 base backup and the 02:00 nightlies, before the prune
NEO4J_NIGHTLY = "nightly-0200-utc"
NEO4J_NIGHTLY_CRON = "0 2 * * *"  # the platform's full backup time
NEO4J_INCREMENTAL = "every-15-minutes"
NEO4J_INCREMENTAL_CRON = "5-59/15 * * * *"  # every 15 minutes, never at 02:00 with the nightly FULL
DAILY_PRUNE = "daily-0330-utc"
DAILY_PRUNE_CRON = "30 3 * * *"
WEEKLY_SAMPLE = "weekly-sample-sun-0500-utc"
WEEKLY_SAMPLE_CRON = "0 5 * * 0"
SAMPLE_PERCENT = 25
MONTHLY_ALL = "monthly-all-2nd-0500-utc"
MONTHLY_ALL_CRON = "0 5 2 * *"  # the 2nd: never with the drill (the 1st, 04:00)
DAILY_WAL = "daily-wal-0600-utc"
DAILY_WAL_CRON = "0 6 * * *"
HOURLY_REPLICATE = "hourly-at-45-utc"
HOURLY_REPLICATE_CRON = "45 * * * *"  # clear of the hour's backups (01:00, 02:00, 03:00), after they committed
REPLICA_PRUNE = "replica-daily-0345-utc"
REPLICA_PRUNE_CRON = "45 3 * * *"
TAGS = ["seedvault"]

HOUR, DAY = 3600.0, 86400.0
# "flow/deployment" -> (period, margin) in seconds: with a notification block, a proactive automation sends one
# message when no run of the deployment completed within period + margin (the schedule did not run at all).
WATCHED: dict[str, tuple[float, float]] = {
    f"backup-postgres/{NIGHTLY_BACKUP}": (DAY, HOUR),
    f"backup-postgres-base/{DAILY_BASE_BACKUP}": (DAY, HOUR),
    f"backup-neo4j/{NEO4J_NIGHTLY}": (DAY, HOUR),
    f"backup-neo4j/{NEO4J_INCREMENTAL}": (15 * 60.0, 15 * 60.0),
    f"backup-platform/{DAILY_PLATFORM}": (DAY, HOUR),
    f"check-wal-freshness/{WAL_FRESHNESS}": (5 * 60.0, 10 * 60.0),
    f"dr-drill/{MONTHLY_DRILL}": (31 * DAY, DAY),
    f"replicate/{HOURLY_REPLICATE}": (HOUR, HOUR),
}


def watched(deployments: list[RunnerDeployment]) -> dict[str, tuple[float, float]]:
    """The deployments among ``deployments`` whose missed runs alert: in :data:`WATCHED`, with an active schedule."""
    out = {}
    for d in deployments:
        name = f"{d.flow_name}/{d.name}"
        if name in WATCHED and any(getattr(s, "active", True) for s in d.schedules or []):
            out[name] = WATCHED[name]
    return out


def build(
    repository: str,
    key: str,
    target: str | None,
    *,
    database: str | None = None,
    drill_target: str | None = None,
    base_target: str | None = None,
    notify_block: str | None = None,
    wal: bool = True,
    neo4j_target: str | None = None,
    neo4j_database: str | None = None,
    neo4j_incremental: bool = False,
    platform: bool = False,
    neo4j_scratch_target: str | None = None,
    neo4j_scratch_setup: str | None = None,
    neo4j_scratch_teardown: str | None = None,
    scratch_parent: str | None = None,
    replica: str | None = None,
) -> list[RunnerDeployment]:
    """The deployments for one platform: PostgreSQL (logical backup, DR drill, with ``wal`` base backup +
    freshness) when ``target`` is given, and Neo4j (nightly, and the 15-minute online backup on request)
    when ``neo4j_target`` is given.

    Args:
        repository, key, target: names of the saved seedvault blocks (``target``: the ``PostgresTarget``;
            None: no PostgreSQL deployments).
        database: the database to back up and drill (default: the target block's database).
        drill_target: the ``PostgresTarget`` block of the server to drill on (default: ``target``, the
            drill then restores into a scratch database next to the source).
        base_target: the ``PostgresTarget`` block for base backups and the freshness check, when it needs
            another role (REPLICATION, pg_monitor) than the logical backup (default: ``target``).
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures.
        wal: also schedule the base backup and the freshness check (the server archives its WAL with
            ``seedvault wal-push``); without archiving they would only fail.
        neo4j_target: the ``Neo4jTarget`` block of the Neo4j database to back up nightly.
        neo4j_database: the Neo4j database (default: the block's).
        neo4j_incremental: Enterprise: the nightly becomes an online FULL and an online AUTO (DIFF) backup
            runs every 15 minutes; see the module docstring.
        platform: add ``backup-platform/daily-0300-utc`` and make the monthly drill a platform drill (needs
            ``target``, ``neo4j_target`` and ``wal``).
        neo4j_scratch_target: the ``Neo4jTarget`` block of the drill's scratch Neo4j instance (None: the
            platform drill restores PostgreSQL only); neo4j_scratch_setup / neo4j_scratch_teardown: the
            commands creating and removing it (both needed with it).
        scratch_parent: parent of the drill's scratch data directories (default: the flow's).
        replica: the second ``SeedvaultRepository`` block: adds ``replicate`` (hourly) and the replica's prune,
            and the restores and drills read from it when the first repository is unreachable.
    """
    if target is None and neo4j_target is None:
        raise ValueError("nothing to deploy: give a PostgreSQL target, a Neo4j target, or both")
    if platform and (target is None or neo4j_target is None or not wal):
        raise ValueError("a platform needs a PostgreSQL target archiving its WAL and a Neo4j target")
    if neo4j_scratch_target and not (neo4j_scratch_setup and neo4j_scratch_teardown):
        raise ValueError("the drill's scratch Neo4j needs both the setup and the teardown command")
    common: dict[str, Any] = {"repository": repository, "key": key, "notify_block": notify_block}
    reading = {**common, "replica": replica} if replica else common  # restores and drills: the fallback
    out = _postgres(common, reading, target, database, drill_target, base_target, wal) if target is not None else []
    if platform:
        assert target is not None and neo4j_target is not None
        scratch = {"neo4j_target": neo4j_scratch_target, "neo4j_scratch_setup": neo4j_scratch_setup,
                   "neo4j_scratch_teardown": neo4j_scratch_teardown}  # fmt: skip
        if scratch_parent:
            scratch["scratch_parent"] = scratch_parent
        out[1] = _platform_drill(reading, scratch)
        out.append(_platform_backup(common, target, database, neo4j_target, neo4j_database))
    if neo4j_target is not None:
        out += _neo4j(common, neo4j_target, neo4j_database, neo4j_incremental)
    out += _maintenance(common, wal=wal and target is not None)
    if replica:
        out += _replication(common, replica)
    return out + _on_demand(reading, target, database, neo4j_target, neo4j_database, wal=wal, platform=platform)


def _replication(common: dict[str, Any], replica: str) -> list[RunnerDeployment]:
    """Hourly copy to the second repository, and its own daily prune (its policy, its block)."""
    copy = replicate_flow.to_deployment(
        name=HOURLY_REPLICATE,
        schedules=[Cron(HOURLY_REPLICATE_CRON, timezone=TIMEZONE)],
        parameters={**common, "replica": replica},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        tags=[*TAGS, "replicate"],
        description="Hourly: copy every backup and WAL file the second repository lacks (manifests last, each "
        "verified on arrival, its own retention); fails on a copy wrong twice or a lag over replication_max_lag.",
    )
    prune = prune_flow.to_deployment(
        name=REPLICA_PRUNE,
        schedules=[Cron(REPLICA_PRUNE_CRON, timezone=TIMEZONE)],
        parameters={**common, "repository": replica},
        tags=[*TAGS, "prune", "replica"],
        description="Daily: apply the second repository's own retention policy (it may keep longer).",
    )
    return [copy, prune]


ON_DEMAND = "on-demand"


def _on_demand(
    common: dict[str, Any],
    target: str | None,
    database: str | None,
    neo4j_target: str | None,
    neo4j_database: str | None,
    *,
    wal: bool,
    platform: bool,
) -> list[RunnerDeployment]:
    """What an operator starts by hand from the UI: the restores, with the block names filled in.

    No schedule. What stays empty is what only the operator can say: the database to restore into, the data
    directory of a recovered copy. ``backup_id`` empty means the latest backup; ``replace`` (PostgreSQL) stays
    off unless the operator turns it on (then the old database is kept as a verified safety copy).
    """
    out: list[RunnerDeployment] = []
    if target is not None:
        out.append(restore_postgres_flow.to_deployment(
            name=ON_DEMAND, parameters={**common, "target": target, "source_database": database},
            tags=[*TAGS, "restore"],
            description="Restore a logical backup (empty backup_id: the latest) into a NEW database named"
            " 'database' on the target server; replace=true swaps it in for a live one after verification, keeping"
            " the old one as <db>_before_<time>. Row counts and checksums verified.",
        ))  # fmt: skip
        if wal:
            out.append(restore_postgres_pitr_flow.to_deployment(
                name=ON_DEMAND, parameters={**common, "target": target}, tags=[*TAGS, "restore"],
                description="Point-in-time recovery into a new data directory on the worker: give data_dir and"
                " exactly one of to_time, to_lsn, to_name, latest. WAL continuity is checked before anything.",
            ))  # fmt: skip
    if neo4j_target is not None:
        out.append(restore_neo4j_flow.to_deployment(
            name=ON_DEMAND, parameters={**common, "target": neo4j_target, "database": neo4j_database},
            tags=[*TAGS, "restore"],
            description="Restore a Neo4j backup (empty backup_id: the latest) over the database, after a"
            " verified safety copy that is put back if anything fails; counts verified.",
        ))  # fmt: skip
    if platform:
        out.append(restore_platform_flow.to_deployment(
            name=ON_DEMAND, parameters={**common, "target": target, "neo4j_target": neo4j_target,
                                        "neo4j_database": neo4j_database},
            tags=[*TAGS, "restore", "platform"],
            description="Both stores to one group (empty group_id: the newest complete one): PostgreSQL by PITR"
            " into data_dir, Neo4j over its verified safety copy; both verified, skew reported.",
        ))  # fmt: skip
    return out


# A platform-consistent recovery point is a group, and groups are daily: the newest is up to a day old when the
# drill runs, so the drill's RPO target is the group interval plus an hour. The 15-minute promise holds per store
# (PostgreSQL by its WAL archive, checked every 5 minutes by check-wal-freshness; Neo4j by Enterprise 15-minute
# incrementals); groups every 15 minutes need Neo4j online backups (RUNBOOK 26.5).
PLATFORM_RPO_TARGET_S = 25 * 3600.0


def _platform_drill(common: dict[str, Any], scratch: dict[str, Any]) -> RunnerDeployment:
    return dr_drill_flow.to_deployment(
        name=MONTHLY_DRILL,
        schedules=[Cron(MONTHLY_DRILL_CRON, timezone=TIMEZONE)],
        parameters={**common, "mode": "platform", "rpo_target": PLATFORM_RPO_TARGET_S, **scratch},
        tags=[*TAGS, "dr-drill", "platform"],
        description="Monthly platform DR drill: newest group -> scratch PostgreSQL (PITR) + scratch Neo4j, "
        "verified, RTO/RPO against the targets, scratch removed, recorded in the repository.",
    )


def _platform_backup(
    common: dict[str, Any], target: str, database: str | None, neo4j_target: str, neo4j_database: str | None
) -> RunnerDeployment:
    return backup_platform_flow.to_deployment(
        name=DAILY_PLATFORM,
        schedules=[Cron(DAILY_PLATFORM_CRON, timezone=TIMEZONE)],
        parameters={
            **common,
            "target": target,
            "database": database,
            "neo4j_target": neo4j_target,
            "neo4j_database": neo4j_database,
            "mode": "dump",
            "verify": True,
        },  # fmt: skip
        tags=[*TAGS, "backup", "platform"],
        description="Daily platform group: Neo4j dump + PostgreSQL restore point at its moment, verified.",
    )


def _maintenance(common: dict[str, Any], *, wal: bool) -> list[RunnerDeployment]:
    """Retention and scheduled verification of the repository (whatever it holds)."""
    prune = prune_flow.to_deployment(
        name=DAILY_PRUNE,
        schedules=[Cron(DAILY_PRUNE_CRON, timezone=TIMEZONE)],
        parameters={**common},
        tags=[*TAGS, "prune"],
        description="Daily: apply the repository block's retention policy; the plan is the artifact.",
    )
    scopes = [
        (WEEKLY_SAMPLE, WEEKLY_SAMPLE_CRON, {"scope": "sample", "percent": SAMPLE_PERCENT}, "a rotating 25 % slice"),
        (MONTHLY_ALL, MONTHLY_ALL_CRON, {"scope": "all"}, "every byte of every backup"),
    ]
    if wal:
        scopes.append((DAILY_WAL, DAILY_WAL_CRON, {"scope": "wal"}, "every archived WAL segment"))
    verifies = [
        verify_repository_flow.to_deployment(
            name=name,
            schedules=[Cron(cron, timezone=TIMEZONE)],
            parameters={**common, **params},
            tags=[*TAGS, "verify"],
            description=f"Verify {what}; fails (and notifies) naming every bad backup or segment.",
        )
        for name, cron, params, what in scopes
    ]
    return [prune, *verifies]


def _postgres(
    common: dict[str, Any],
    reading: dict[str, Any],
    target: str,
    database: str | None,
    drill_target: str | None,
    base_target: str | None,
    wal: bool,
) -> list[RunnerDeployment]:
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
        parameters={**reading, "target": drill_target or target, "database": database},
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


def _neo4j(common: dict[str, Any], target: str, database: str | None, incremental: bool) -> list[RunnerDeployment]:
    params = {**common, "target": target, "database": database, "verify": True}
    mode = "online" if incremental else "dump"
    nightly = backup_neo4j_flow.to_deployment(
        name=NEO4J_NIGHTLY,
        schedules=[Cron(NEO4J_NIGHTLY_CRON, timezone=TIMEZONE)],
        parameters={**params, "mode": mode, "backup_type": "FULL"},
        tags=[*TAGS, "backup", "neo4j"],
        description="Nightly full Neo4j backup"
        + (" (online FULL: a new chain, no downtime)" if incremental else " (offline dump, downtime recorded)")
        + ", verified, with an artifact.",
    )
    if not incremental:
        return [nightly]
    every = backup_neo4j_flow.to_deployment(
        name=NEO4J_INCREMENTAL,
        schedules=[Cron(NEO4J_INCREMENTAL_CRON, timezone=TIMEZONE)],
        parameters={**params, "mode": "online", "backup_type": "AUTO", "retry_delay_seconds": 30},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        tags=[*TAGS, "backup", "neo4j", "incremental"],
        description="Every 15 minutes (Enterprise): online AUTO backup, a DIFF of the night's chain, verified.",
    )
    return [nightly, every]
