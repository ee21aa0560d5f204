"""Platform tasks (issue 15): one engine call each (group backup, group restore, drill), and their artifacts.

Never retried as tasks: a group backup stops the graph for its dump (a retry is another downtime window, the
flow decides), a restore stops and overwrites Neo4j, and a drill's figures are only worth what one run
measured. Artifact tables are ``field | value`` rows like the other flows' (tasks.reports): ids, seconds,
counts and targets, never a block field or a command line.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from seedvault.config import Settings
from seedvault.ops.neo4j_backup import Neo4jJob
from seedvault.ops.platform import backup_platform, restore_platform
from seedvault.ops.platform_drill import STEPS, DrillOptions, DrillReport, run_drill
from seedvault.repository import Repository
from seedvault.sources.postgres.connection import PgTarget
from tasks.reports import _rows, artifact_key

DRILL_ARTIFACT = "seedvault-dr-drill-platform"


@task(name="backup-platform", cache_policy=NO_CACHE, persist_result=False)
def backup_platform_task(
    repo: Repository, settings: Settings, job: Neo4jJob, pg: PgTarget, *, mode: str, label: str | None
) -> dict[str, Any]:
    return backup_platform(repo, settings, job, pg, mode=mode, label=label).summary()


@task(name="restore-platform", cache_policy=NO_CACHE, persist_result=False)
def restore_platform_task(
    repo: Repository, settings: Settings, job: Neo4jJob | None, data_dir: str, **kwargs: Any
) -> dict[str, Any]:
    return restore_platform(repo, settings, job, data_dir, **kwargs).as_dict()


@task(name="drill-platform", cache_policy=NO_CACHE, persist_result=False)
def drill_platform_task(repo: Repository, settings: Settings, job: Neo4jJob | None, options: DrillOptions) -> Any:
    """The drill, recorded in the repository; returns the report (the flow publishes it, then fails if it must)."""
    return run_drill(repo, settings, job, options)


def _s(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


def verdict(fig: dict[str, Any]) -> str | None:
    """``pass`` or ``FAIL`` against the figure's target (None when it was not measured)."""
    return None if "met" not in fig else "pass" if fig["met"] else "FAIL"


def drill_verdict_rows(rto: dict[str, Any], rpo: dict[str, Any]) -> list[tuple[str, Any]]:
    """RTO and RPO, each with its target and pass/FAIL: the same rows in both drill modes' artifacts."""
    return [
        ("RTO s", _s(rto.get("seconds"))),
        ("RTO target s", _s(rto.get("target_seconds"))),
        ("RTO", verdict(rto)),
        ("RPO s", _s(rpo.get("seconds"))),
        ("RPO target s", _s(rpo.get("target_seconds"))),
        ("RPO", verdict(rpo)),
    ]


def drill_rows(report: DrillReport) -> list[dict[str, Any]]:
    rto, rpo = report.rto, report.rpo
    pairs: list[tuple[str, Any]] = [
        ("status", "passed" if report.result == "ok" else "FAILED"),
        ("drill", report.drill_id),
        ("group", report.group_id),
        ("error", report.error),
        *[(f"problem {i + 1}", p) for i, p in enumerate(report.problems)],
        *drill_verdict_rows(rto, rpo),
        ("RTO postgres s", _s(rto.get("postgres_seconds"))),
        ("RTO neo4j s", _s(rto.get("neo4j_seconds"))),
        ("RPO of the group s", _s(rpo.get("group_seconds"))),
        ("newest recovered commit", rpo.get("newest_commit")),
        ("restore point time", rpo.get("restore_point_time")),
    ]
    pairs += [(f"step {what} s", _s(report.steps[key])) for key, what in STEPS if key in report.steps]
    verified = (report.verified or {}).get("postgres") or {}
    pairs += [("tables verified", verified.get("tables")), ("rows verified", verified.get("rows"))]
    pairs += [("scratch removed", "yes" if report.cleanup.get("removed") else "NO" if report.cleanup else None)]
    pairs += [("leftovers of killed drills removed", ", ".join(report.swept) or None)]
    for t in report.trend:
        missed = f", missed {','.join(t['missed'])}" if t["missed"] else ""
        rto_s, rpo_s = _s(t["rto_seconds"]) or "-", _s(t["rpo_seconds"]) or "-"
        pairs.append((f"trend {t['time']}", f"{t['result']} RTO {rto_s} s, RPO {rpo_s} s{missed}"))
    return _rows(pairs)


def publish_platform_drill_artifact(report: DrillReport) -> UUID:
    return create_table_artifact(
        drill_rows(report),
        key=DRILL_ARTIFACT,
        description=f"seedvault platform DR drill {report.drill_id}: RTO and RPO against the targets, last 12 drills",
    )


def publish_group_artifact(summary: dict[str, Any], repository: str) -> UUID:
    rp = summary["restore_point"]
    pairs = [
        ("group", summary["id"]),
        ("repository", repository),
        ("neo4j backup", f"{summary['neo4j_backup']} ({summary['neo4j_mode']})"),
        ("base backup", summary["base_backup"]),
        ("restore point", f"{rp['name']} at {rp['lsn']} (timeline {rp['timeline']})"),
        ("restore point time", rp["time"]),
        ("skew s", summary["skew_seconds"]),
        ("skew bound s", summary["skew_bound_seconds"]),
        ("tables", summary["tables"]),
        ("rows", summary["rows"]),
        *[(f"{k} s", v) for k, v in summary.get("seconds", {}).items()],
    ]
    return create_table_artifact(_rows(pairs), key=artifact_key("seedvault-backup-platform"),
                                 description=f"seedvault platform group {summary['id']}")  # fmt: skip


def publish_platform_restore_artifact(report: dict[str, Any]) -> UUID:
    pg, m = report["postgres"], report["moments"]
    v = pg.get("verified") or {}
    pairs = [
        ("group", report["group_id"]),
        ("postgres data dir", pg.get("data_dir")),
        ("postgres port", pg.get("port")),
        ("recovered to", f"{m.get('postgres_lsn')} ({m.get('postgres')})"),
        ("tables verified", v.get("tables")),
        ("rows verified", v.get("rows")),
        ("checksums verified", v.get("checksums")),
        ("neo4j safety copy", (report.get("neo4j") or {}).get("safety_copy")),
        ("skew s", m.get("skew_seconds")),
        *[(f"{k} s", val) for k, val in report.get("seconds", {}).items()],
    ]
    return create_table_artifact(_rows(pairs), key=artifact_key("seedvault-restore-platform"),
                                 description=f"seedvault restore of platform group {report['group_id']}")  # fmt: skip
