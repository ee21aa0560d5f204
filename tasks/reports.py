"""What a run tells the operator: the summary a flow returns and the Prefect artifacts it publishes.

Artifacts are vertical ``field | value`` tables (one row per fact, then one row per table's row count), which
read well in the UI whatever the number of tables and stay easy to parse. They hold ids, sizes, seconds and
counts only; no block field, parameter value or exception chain is ever copied into them.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from prefect.artifacts import create_table_artifact

from seedvault.ops.postgres_backup import BackupReport


def artifact_key(*parts: str) -> str:
    """A valid artifact key (lowercase letters, digits, dashes) from free text such as database names."""
    text = "-".join(parts).lower()
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")[:100]


def backup_summary(report: BackupReport, attempt: int) -> dict[str, Any]:
    """The engine's summary plus per-object bytes, per-table row counts and the stream attempt."""
    summary = report.summary()
    summary["attempt"] = attempt
    summary["finished"] = report.body["finished"]
    summary["compressed_size"] = report.body["compressed_size"]
    summary["objects"] = {
        name: {
            "raw_size": st.raw_size,
            "compressed_size": st.compressed_size,
            "stored_size": st.stored_size,
            "chunks": st.chunks,
            "seconds": round(st.seconds, 3),
            "steps": st.times.as_dict(),
        }
        for name, st in report.objects.items()
    }
    summary["table_rows"] = {f"{t['schema']}.{t['name']}": t["rows"] for t in report.body["source"].get("tables", [])}
    summary["estimated"] = [
        f"{t['schema']}.{t['name']}" for t in report.body["source"].get("tables", []) if t.get("estimated")
    ]
    return summary


def _rows(pairs: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [{"field": k, "value": v} for k, v in pairs if v is not None]


def backup_rows(summary: dict[str, Any], repository: str) -> list[dict[str, Any]]:
    steps = summary.get("steps", {})
    seconds = summary.get("seconds", {})
    verify = summary.get("verify") or {}
    pairs: list[tuple[str, Any]] = [
        ("id", summary["id"]),
        ("status", "completed" + (", verified" if verify else "")),
        ("database", summary["database"]),
        ("repository", repository),
        ("finished", summary.get("finished")),
        ("stream attempts", summary.get("attempt")),
        ("raw bytes", summary["raw_size"]),
        ("compressed bytes", summary.get("compressed_size")),
        ("stored bytes", summary["stored_size"]),
        ("ratio raw/stored", summary["ratio"]),
    ]
    pairs += [(f"{step} s", steps.get(step)) for step in ("read", "compress", "encrypt", "hash", "upload")]
    pairs += [(f"{phase} s", seconds.get(phase)) for phase in ("dump", "inspect", "globals", "total")]
    pairs += [("verify s", verify.get("seconds")), ("tables", summary["tables"]), ("total rows", summary["total_rows"])]
    estimated = set(summary.get("estimated", []))
    pairs += [
        (f"rows {name}" + (" (estimate)" if name in estimated else ""), rows)
        for name, rows in summary.get("table_rows", {}).items()
    ]
    return _rows(pairs)


def publish_backup_artifact(summary: dict[str, Any], repository: str) -> UUID:
    return create_table_artifact(
        backup_rows(summary, repository),
        key=artifact_key("seedvault-backup", summary["database"]),
        description=f"seedvault backup {summary['id']} of {summary['database']}",
    )


def publish_failure_artifact(kind: str, database: str, reason: str) -> UUID:
    """The same artifact key as a success, so the latest artifact always shows the latest outcome."""
    return create_table_artifact(
        _rows([("status", "failed"), ("database", database), ("reason", reason)]),
        key=artifact_key(f"seedvault-{kind}", database),
        description=f"seedvault {kind} of {database} failed",
    )


def restore_rows(report: dict[str, Any], extra: list[tuple[str, Any]] | None = None) -> list[dict[str, Any]]:
    seconds = report.get("seconds", {})
    pairs: list[tuple[str, Any]] = [
        ("backup id", report["backup_id"]),
        ("database", report["database"]),
        ("tables verified", report["tables_verified"]),
        ("rows verified", report["rows_verified"]),
        ("checksums verified", report["checksums_verified"]),
        ("estimated (not compared)", ", ".join(report.get("estimated_skipped") or []) or None),
        ("safety copy", report.get("safety_copy")),
        ("pg_restore s", round(seconds["pg_restore"], 3) if "pg_restore" in seconds else None),
        ("verify s", round(seconds["verify"], 3) if "verify" in seconds else None),
        ("total s", round(seconds["total"], 3) if "total" in seconds else None),
    ]
    pairs += [(f"note {i + 1}", note) for i, note in enumerate(report.get("notes") or [])]
    return _rows(pairs + list(extra or []))


def publish_restore_artifact(report: dict[str, Any]) -> UUID:
    return create_table_artifact(
        restore_rows(report),
        key=artifact_key("seedvault-restore", report["database"]),
        description=f"seedvault restore of {report['backup_id']} into {report['database']}",
    )


def publish_drill_artifact(source: str, report: dict[str, Any], extra: list[tuple[str, Any]]) -> UUID:
    return create_table_artifact(
        restore_rows(report, [("drill of", source), *extra]),
        key=artifact_key("seedvault-dr-drill", source),
        description=f"seedvault DR drill of {source}: backup {report['backup_id']} restored, verified, dropped",
    )
