"""``prune`` and scheduled verification as tasks, with the table artifacts an operator reads in the UI.

Prune is idempotent (a second run over what the first kept deletes nothing, and a crashed run is finished
by the next), so unlike a streaming stage it may be retried alone. Verification reads committed,
immutable objects: also safe to retry.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from seedvault.config import Settings
from seedvault.errors import UsageError, VerificationFailed
from seedvault.ops import prune as prune_op
from seedvault.ops.verify import Sample, VerifyResult, verify_all, verify_latest
from seedvault.repository import Repository
from seedvault.retention import policies_of
from seedvault.storagecost import lock_policy_conflict
from seedvault.units import human_bytes
from tasks.postgres import transient_only
from tasks.reports import artifact_key

SCOPES = ("sample", "all", "latest", "wal")


@task(name="prune", retries=1, retry_delay_seconds=30, cache_policy=NO_CACHE, persist_result=False)
def prune_task(repo: Repository, settings: Settings, repository_url: str, dry_run: bool = False) -> dict[str, Any]:
    """Apply the repository's retention policy; publishes the plan (what was deleted and why, bytes freed)."""
    report = prune_op.prune(
        repo,
        policies_of(settings),
        execute=not dry_run,
        state=prune_op.audit_state(repo),
        lease_stale=settings.lease_stale_after(),
        lock_conflict=lock_policy_conflict(
            settings.object_lock, settings.object_lock_days, policies_of(settings).default.keep_within
        ),
    )
    publish_prune_artifact(report, repository_url)
    deleting = [d.name for d in report.plan.backups if not d.keep]
    summary = {
        "dry_run": dry_run,
        "backups": len(report.plan.backups),
        "deleted_backups": report.deleted_backups if report.executed else [],
        "would_delete": [] if report.executed else deleting,
        "deleted_wal": report.deleted_wal,
        "bytes_freed": report.bytes_freed,
        "in_use": report.in_use,
        "warnings": report.plan.warnings,
    }
    get_run_logger().info(
        "prune: %s %d backups and %d WAL files, freed %d bytes; %d backups kept",
        "would delete" if dry_run else "deleted",
        len(deleting) if dry_run else len(report.deleted_backups),
        sum(1 for d in report.plan.wal if not d.keep) if dry_run else report.deleted_wal,
        report.bytes_freed,
        sum(1 for d in report.plan.backups if d.keep),
    )
    for warning in report.plan.warnings:
        get_run_logger().warning("prune: %s", warning)
    return summary


def prune_after_backup(repo: Repository, repo_block: Any, backup_id: str) -> dict[str, Any]:
    """The last step of a backup flow: prune; a failure says the backup itself is stored and verified."""
    from prefect.utilities.annotations import quote

    from flows.failures import operator_error
    from seedvault.errors import SeedvaultError

    try:
        return prune_task(quote(repo), quote(repo_block.settings()), repo_block.url)
    except SeedvaultError as exc:
        failure = operator_error(exc)
        raise type(failure)(
            f"backup {backup_id} is stored and verified, but the prune after it failed: {failure.message}"
        ) from None


def prune_rows(report: prune_op.PruneReport) -> list[dict[str, Any]]:
    """One row per backup (decision and every rule), one for the WAL, one for the totals."""
    rows = []
    done = set(report.deleted_backups)
    for d in report.plan.backups:
        decision = "keep" if d.keep else ("deleted" if d.name in done else "delete (dry run)")
        rows.append(
            {
                "item": d.name,
                "kind": d.item.kind,  # type: ignore[union-attr]
                "label": d.item.label or "-",  # type: ignore[union-attr]
                "decision": decision,
                "why": "; ".join(d.reasons),
            }
        )
    for line in report.in_use:
        bid, _, holder = line.partition(": ")
        rows.append({"item": bid, "kind": "", "label": "", "decision": "keep", "why": f"in use by {holder}"})
    for line in report.unreadable:
        bid, _, why = line.partition(": ")
        rows.append({"item": bid, "kind": "", "label": "", "decision": "keep", "why": f"unreadable: {why}"})
    wal_gone = [d for d in report.plan.wal if not d.keep]
    rows.append(
        {
            "item": "WAL",
            "kind": "wal",
            "label": "-",
            "decision": f"{'deleted' if report.executed else 'delete (dry run)'} {len(wal_gone)}, "
            f"kept {len(report.plan.wal) - len(wal_gone)}",
            "why": wal_gone[0].reasons[0] if wal_gone else "every WAL file is needed",
        }
    )
    rows.append(
        {
            "item": "total",
            "kind": "",
            "label": "",
            "decision": f"{len(report.deleted_backups)} backups, {report.deleted_wal} WAL files deleted",
            "why": f"{human_bytes(report.bytes_freed)} freed",
        }
    )
    return rows


def publish_prune_artifact(report: prune_op.PruneReport, repository_url: str) -> UUID:
    return create_table_artifact(
        table=prune_rows(report),
        key=artifact_key("seedvault-prune", repository_url.split("://", 1)[-1]),
        description=f"Retention plan for {repository_url}: what was deleted and why, what is kept and why.",
    )


@task(
    name="verify-repository",
    retries=1,
    retry_delay_seconds=60,
    retry_condition_fn=transient_only,  # an integrity failure is the same on every read: no retry, no delay
    cache_policy=NO_CACHE,
    persist_result=False,
)
def verify_scope_task(repo: Repository, repository_url: str, scope: str, percent: int = 25) -> dict[str, Any]:
    """Verify ``scope`` (sample P %, all, latest, wal); publishes what was read; fails naming every bad item."""
    if scope not in SCOPES:
        raise UsageError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    if scope == "sample" and not 1 <= percent <= 100:
        raise UsageError(f"percent must be from 1 to 100, not {percent}")
    if scope == "wal":
        return _verify_wal(repo, repository_url)
    skipped: list[str] = []
    sample = Sample.make(percent) if scope == "sample" else None
    if scope == "latest":
        results, skipped = verify_latest(repo)
    else:
        results = verify_all(repo, sample=sample)
    rows: list[dict[str, Any]] = [_row(r) for r in results]
    rows += [{"item": bid, "ok": False, "objects": 0, "bytes": 0, "problem": "cannot be read"} for bid in skipped]
    bad = [r for r in results if not r.ok]
    objects, read = sum(r.objects for r in results), sum(r.raw_bytes for r in results)
    what = f"sample {percent}%: slice {sample.group} of {sample.groups}" if sample else scope
    rows.append({"item": "total", "ok": not bad, "objects": objects, "bytes": read, "problem": what})
    create_table_artifact(
        table=rows,
        key=artifact_key("seedvault-verify", scope, repository_url.split("://", 1)[-1]),
        description=f"verify {what} of {repository_url}: every backup read, objects and bytes verified.",
    )
    if bad:
        named = "; ".join(f"{r.backup_id}: {r.problems[0]}" for r in bad)
        raise VerificationFailed(f"{len(bad)} of {len(results)} backups failed verification; {named}")
    get_run_logger().info("verify %s: %d backups ok, %d objects, %d bytes", what, len(results), objects, read)
    return {"scope": scope, "backups": len(results), "objects": objects, "bytes": read, "failed": []}


def _row(r: VerifyResult) -> dict[str, Any]:
    return {
        "item": r.backup_id,
        "ok": r.ok,
        "objects": r.objects,
        "bytes": r.raw_bytes,
        "problem": r.problems[0] if r.problems else "",
    }


def _verify_wal(repo: Repository, repository_url: str) -> dict[str, Any]:
    from seedvault.ops.verify_wal import verify_wal

    reports = verify_wal(repo)
    rows = [
        {
            "item": f"system {r.system_id}",
            "ok": r.ok,
            "objects": r.files,
            "bytes": r.raw_bytes,
            "problem": "; ".join(f"{p.name}: {p.problem}" for p in r.problems[:3]),
        }
        for r in reports
    ]
    create_table_artifact(
        table=rows,
        key=artifact_key("seedvault-verify-wal", repository_url.split("://", 1)[-1]),
        description=f"verify wal of {repository_url}: every segment from the oldest base backup's start.",
    )
    bad = [f"system {r.system_id}: {p.name}: {p.problem}" for r in reports for p in r.problems]
    if bad or not all(r.ok for r in reports):
        raise VerificationFailed(f"the WAL archive failed verification ({len(bad)} problems): {'; '.join(bad[:5])}")
    return {"scope": "wal", "systems": len(reports), "objects": sum(r.files for r in reports), "failed": []}
