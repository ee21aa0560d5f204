"""``dr-drill``: prove, monthly, that the latest backup can be restored and is complete.

Two modes. ``platform`` (the monthly deployment's, when the platform has both stores): the newest complete
platform group (or a seeded random one within a window) restored into scratch targets the drill creates and
removes itself (seedvault.ops.platform_drill): PostgreSQL by PITR into a scratch data directory, Neo4j into
the scratch instance the setup command makes; both verified; RTO and RPO measured (total, per store, per step)
against the targets; recorded as a ``drill`` event in the repository; an artifact with the figures and the
trend of the last 12 drills. The run fails (and so notifies) when a target is missed or anything fails,
after the event is recorded and the artifact published.

``postgres`` (the narrower, older drill of one logical backup). Steps: find the latest complete backup of the
database; verify it (every byte read back through the authenticators); restore it into a scratch database, which
the engine checks table by table (row counts against the manifest, content checksums where the backup recorded
them); drop the scratch database; publish an artifact with the counts and the backup's age. The scratch database is
dropped only if this drill created it: a failed restore is dropped by the engine, and an existing database of that
name is refused, never dropped.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from blocks import Neo4jTarget, PostgresTarget
from flows.failures import load_block, notify_failure, notify_recovered, operator_error
from flows.repositories import open_for_restore
from seedvault.errors import DrillTargetMissed, SeedvaultError, UsageError
from seedvault.ops import logical_drill
from seedvault.ops.platform_drill import DEFAULT_SCRATCH_PARENT, RPO_TARGET_S, RTO_TARGET_S, DrillOptions
from seedvault.ops.postgres_restore import RestoreOptions
from tasks.metrics import pushes_metrics
from tasks.platform import drill_platform_task, drill_verdict_rows, publish_platform_drill_artifact
from tasks.postgres import drop_database, latest_backup, preflight, restore_task
from tasks.reports import publish_drill_artifact, publish_failure_artifact
from tasks.status import publish_status
from tasks.verify import verify_backup_task


def scratch_name(source: str, now: datetime | None = None) -> str:
    suffix = "_drill_" + (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    return source[: 63 - len(suffix)] + suffix


@flow(
    name="dr-drill",
    on_completion=[notify_recovered, publish_status],
    on_failure=[notify_failure, publish_status],
    on_crashed=[notify_failure, publish_status],
    persist_result=False,
)
@pushes_metrics
def dr_drill_flow(
    repository: str,
    key: str,
    target: str | None = None,
    database: str | None = None,
    scratch_database: str | None = None,
    no_owner: bool = False,
    notify_block: str | None = None,
    mode: str = "postgres",
    neo4j_target: str | None = None,
    neo4j_scratch_setup: str | None = None,
    neo4j_scratch_teardown: str | None = None,
    scratch_parent: str = DEFAULT_SCRATCH_PARENT,
    group_id: str | None = None,
    label: str | None = None,
    random_within_days: float | None = None,
    seed: int | None = None,
    rto_target: float | None = None,
    rpo_target: float | None = None,
    replica: str | None = None,
) -> dict[str, Any]:
    """``mode="postgres"``: restore the latest backup of ``database`` into a scratch database, verify, drop.
    ``mode="platform"``: drill a platform group into scratch targets (see the module docstring).

    Args:
        repository, key: names of the saved repository and key blocks.
        target: postgres mode: the ``PostgresTarget`` block of the server to restore on (a DR server, or the
            source). Not used by the platform mode (PostgreSQL is recovered from the archive on the worker).
        database: whose latest backup to drill (default: the target block's database).
        scratch_database: scratch name (default ``<database>_drill_<UTC time>``); must not exist.
        no_owner: skip ownership/privileges (a DR server without the source's roles).
        notify_block: ``"<block-type-slug>/<name>"`` of a notification block for failures.
        neo4j_target: platform mode: the ``Neo4jTarget`` block of the *scratch* Neo4j instance (None:
            PostgreSQL only); neo4j_scratch_setup / neo4j_scratch_teardown: the commands creating and
            removing it (both required with a Neo4j target: the restore takes no safety copy).
        scratch_parent: world-traversable parent of the scratch data directories (and their markers).
        group_id, label, random_within_days, seed: which group (default: the newest complete one).
        rto_target, rpo_target: seconds; default 1 h and, for the RPO, 15 min (platform: the WAL archive) or
            25 h (postgres: the age of the nightly logical backup). Both modes record the figures in a
            ``drill`` event, show them against the targets (pass/FAIL) in the artifact, and fail the run
            when a target is missed, after the artifact is published.
        replica: name of the second ``SeedvaultRepository`` block (the ``replicate`` flow's destination): read
            from it when this repository is unreachable (a drill of the DR path itself), saying so in the log
            and the result (empty: never).
    """
    if mode == "platform":
        return _platform_drill(repository, key, replica, neo4j_target, DrillOptions(
            scratch_parent=scratch_parent, group_id=group_id, label=label, random_within_days=random_within_days,
            seed=seed, rto_target=RTO_TARGET_S if rto_target is None else rto_target,
            rpo_target=RPO_TARGET_S if rpo_target is None else rpo_target, neo4j_setup=neo4j_scratch_setup,
            neo4j_teardown=neo4j_scratch_teardown,
        ))  # fmt: skip
    if mode != "postgres":
        raise UsageError(f"dr-drill mode must be platform or postgres, not {mode!r}")
    if target is None:
        raise UsageError("the postgres drill needs a target (PostgresTarget block)")
    source = database or target  # for the failure artifact, if the block cannot be loaded
    started = time.monotonic()
    try:
        blk = load_block(PostgresTarget, target)
        source = database or blk.database
        scratch = scratch_database or scratch_name(source)
        if scratch == source:
            raise UsageError(f"the scratch database must not be {source}, the database under drill")
        pg = blk.pg_target(scratch)
        repo = open_for_restore(repository, key, replica).repo
        preflight(quote(repo), quote(pg), backup=False)
        backup_id = latest_backup(quote(repo), source)
        checked = verify_backup_task(quote(repo), backup_id)
        options = RestoreOptions(no_owner=no_owner, checksums=True)
        report = restore_task(quote(repo), backup_id, quote(pg), quote(options), purpose="drill")
        restored_at, rto = datetime.now(UTC), time.monotonic() - started
        dropped = drop_database(quote(pg), scratch, protect=source)
        body = repo.manifest(backup_id)
        finished = body["finished"]
    except SeedvaultError as exc:
        failure = operator_error(exc)
        publish_failure_artifact("dr-drill", source, failure.message)
        raise failure from None
    made = datetime.strptime(finished, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    age = round((datetime.now(UTC) - made).total_seconds() / 3600, 2)
    figures = logical_drill.judge(
        rto,
        (restored_at - made).total_seconds(),
        logical_drill.RTO_TARGET_S if rto_target is None else rto_target,
        logical_drill.RPO_TARGET_S if rpo_target is None else rpo_target,
    )
    logical_drill.record(repo, backup_id, body, figures)
    extra = [
        *drill_verdict_rows(figures["rto"], figures["rpo"]),
        ("backup finished", finished),
        ("backup age h", age),
        ("verified bytes", checked["bytes"]),
        ("scratch database", f"{scratch} (dropped)"),
        ("drop s", dropped),
    ]
    publish_drill_artifact(source, report, extra, passed=figures["passed"])
    if not figures["passed"]:
        missed = "; ".join(
            f"{w.upper()} {figures[w]['seconds']:.3f} s missed the target of {figures[w]['target_seconds']:g} s"
            for w in figures["missed"]
        )
        raise DrillTargetMissed(f"DR drill of {source}: backup {backup_id} restored and verified, but {missed}")
    get_run_logger().info(
        "DR drill of %s passed: backup %s (%.1f h old), %d tables, %d rows, %d checksums verified",
        source,
        backup_id,
        age,
        report["tables_verified"],
        report["rows_verified"],
        report["checksums_verified"],
    )
    return {**report, "source": source, "scratch_database": scratch, "backup_age_hours": age, "verify": checked,
            "rto": figures["rto"], "rpo": figures["rpo"]}  # fmt: skip


def _platform_drill(
    repository: str, key: str, replica: str | None, neo4j_target: str | None, options: DrillOptions
) -> dict[str, Any]:
    try:
        opened = open_for_restore(repository, key, replica)
        repo, repo_block = opened.repo, opened.block
        n_blk = load_block(Neo4jTarget, neo4j_target) if neo4j_target else None
        if n_blk is None:
            report = drill_platform_task(quote(repo), quote(repo_block.settings()), None, quote(options))
        else:
            with n_blk.open_job() as job:
                report = drill_platform_task(quote(repo), quote(repo_block.settings()), quote(job), quote(options))
    except SeedvaultError as exc:  # refused before it started (configuration): nothing was created
        failure = operator_error(exc)
        publish_failure_artifact("dr-drill", "platform", failure.message)
        raise failure from None
    publish_platform_drill_artifact(report)
    try:
        report.raise_for_result()
    except SeedvaultError as exc:
        raise operator_error(exc) from None
    get_run_logger().info(
        "platform DR drill %s of group %s passed: RTO %.3f s (target %g), RPO %.3f s (target %g)",
        report.drill_id, report.group_id, report.rto["seconds"], report.rto["target_seconds"], report.rpo["seconds"],
        options.rpo_target,
    )  # fmt: skip
    return report.as_dict()
