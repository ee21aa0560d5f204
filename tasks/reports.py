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

from seedvault.ops.neo4j_backup import Neo4jBackupReport
from seedvault.ops.postgres_backup import BackupReport
from seedvault.units import human_bytes


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
        ("raw size", human_bytes(summary["raw_size"])),
        ("compressed size", human_bytes(summary.get("compressed_size"))),
        ("stored size", human_bytes(summary["stored_size"])),
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


def failure_key(*parts: str) -> str:
    """``seedvault-failure-<flow>-<subject>``: a failure never shares a key with a success (nor the status).

    The success artifact of the same flow and subject stays the latest under its own key, so "the last good
    backup" is one click; the failure is the latest under this one.
    """
    return artifact_key("seedvault-failure", *parts)


def publish_failure_artifact(kind: str, database: str, reason: str) -> UUID:
    """The failure of ``kind`` (backup, restore, dr-drill...) for ``database``, under its own key."""
    return create_table_artifact(
        _rows([("status", "failed"), ("database", database), ("reason", reason)]),
        key=failure_key(kind, database),
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


def base_backup_summary(body: dict[str, Any], attempt: int) -> dict[str, Any]:
    """The facts of a committed physical base backup an operator (and a later restore) asks for."""
    src = body["source"]
    stored = body["stored_size"]
    return {
        "id": body["id"],
        "label": body.get("labels", {}).get("name"),
        "system_id": src["system_id"],
        "timeline": src["timeline"],
        "start_lsn": src["start_lsn"],
        "stop_lsn": src["stop_lsn"],
        "start_wal": src["start_wal"],
        "stop_wal": src["stop_wal"],
        "pg_major": src.get("pg_major"),
        "files": src.get("files"),
        "finished": body["finished"],
        "raw_size": body["raw_size"],
        "compressed_size": body.get("compressed_size"),
        "stored_size": stored,
        "ratio": round(body["raw_size"] / stored, 2) if stored else None,
        "seconds": body.get("seconds", {}),
        "attempt": attempt,
    }


def publish_base_backup_artifact(summary: dict[str, Any], repository: str, target: str, server: str) -> UUID:
    seconds = summary.get("seconds", {})
    verify = summary.get("verify") or {}
    pairs: list[tuple[str, Any]] = [
        ("id", summary["id"]),
        ("status", "completed" + (", verified" if verify else "")),
        ("server", server),
        ("repository", repository),
        ("system id", summary["system_id"]),
        ("timeline", summary["timeline"]),
        ("start lsn", summary["start_lsn"]),
        ("stop lsn", summary["stop_lsn"]),
        ("wal", f"{summary['start_wal']}..{summary['stop_wal']}"),
        ("finished", summary["finished"]),
        ("attempts", summary.get("attempt")),
        ("raw size", human_bytes(summary["raw_size"])),
        ("compressed size", human_bytes(summary.get("compressed_size"))),
        ("stored size", human_bytes(summary["stored_size"])),
        ("ratio raw/stored", summary.get("ratio")),
        ("files", summary.get("files")),
        ("pg_basebackup s", seconds.get("base")),
        ("confirm wal s", seconds.get("confirm_wal")),
        ("total s", seconds.get("total")),
        ("verify s", verify.get("seconds")),
    ]
    return create_table_artifact(
        _rows(pairs),
        key=artifact_key("seedvault-base-backup", target),
        description=f"seedvault base backup {summary['id']} of system {summary['system_id']}",
    )


def publish_freshness_artifact(report: dict[str, Any], target: str) -> UUID:
    """The freshness verdict with its numbers; the same key whether fresh or stale."""
    problems = report.get("problems") or []
    pairs: list[tuple[str, Any]] = [
        ("status", "fresh" if report["ok"] else f"stale ({', '.join(p['kind'] for p in problems)})"),
        ("reason", problems[0]["message"] if problems else None),
        ("server", report["server"]),
        ("system id", report["system_id"]),
        ("timeline", report["timeline"]),
        ("current lsn", report["current_lsn"]),
        ("last archived", report["last_archived_wal"]),
        ("last archived at", report["last_archived_time"]),
        ("age s", report["age_seconds"]),
        ("lag", human_bytes(report["lag_bytes"])),
        ("pending", report["pending"]),
        ("oldest pending", report["oldest_pending"]),
        ("oldest pending s", report["oldest_pending_age_seconds"]),
        ("failed count", report["failed_count"]),
        ("last failed", report["last_failed_wal"]),
        ("base backup", report["base_backup"]),
        ("segments checked", report["segments_checked"]),
        (
            "wal since base backup",
            f"{report['first_segment']}..{report['last_segment']}" if report["first_segment"] else None,
        ),
        ("max lag s", report["max_lag"]),
        ("archive_timeout s", report["archive_timeout"]),
    ]
    pairs += [(f"problem {i + 1}", p["message"]) for i, p in enumerate(problems[1:], start=1)]
    pairs += [(f"note {i + 1}", note) for i, note in enumerate(report.get("notes") or [])]
    return create_table_artifact(
        _rows(pairs),
        key=artifact_key("seedvault-wal-freshness", target),
        description=f"seedvault WAL freshness of {report['server']}: {'fresh' if report['ok'] else 'stale'}",
    )


def publish_server_failure_artifact(kind: str, target: str, server: str, reason: str) -> UUID:
    """A server-level run (base backup, freshness check) that failed before it had numbers to show."""
    return create_table_artifact(
        _rows([("status", "failed"), ("server", server), ("reason", reason)]),
        key=failure_key(kind, target),
        description=f"seedvault {kind} of {server} failed",
    )


def publish_drill_artifact(
    source: str, report: dict[str, Any], extra: list[tuple[str, Any]], *, passed: bool = True
) -> UUID:
    """The postgres drill's table: passed/FAILED first, then RTO and RPO against their targets (``extra``)."""
    return create_table_artifact(
        [
            {"field": "status", "value": "passed" if passed else "FAILED"},
            *restore_rows(report, [("drill of", source), *extra]),
        ],
        key=artifact_key("seedvault-dr-drill", source),
        description=f"seedvault DR drill of {source}: backup {report['backup_id']} restored, verified, dropped",
    )


# --- Neo4j ---------------------------------------------------------------------------------------------
def neo4j_backup_summary(report: Neo4jBackupReport, attempt: int) -> dict[str, Any]:
    """The engine's summary plus what the artifact shows: edition, finish time, chain, the task attempt."""
    summary = report.summary()
    src = report.body["source"]
    stored = summary["stored_size"]
    summary.update(
        attempt=attempt,
        edition=src.get("edition"),
        finished=report.body.get("finished"),
        chain=src.get("chain"),
        ratio=round(summary["raw_size"] / stored, 2) if stored else None,
    )
    return summary


def neo4j_count_rows(counts: dict[str, Any] | None, *, missing: str) -> list[tuple[str, Any]]:
    """Nodes and relationships in total, per label and per relationship type; ``missing`` when unknown.

    ``counts`` is what :meth:`seedvault.sources.neo4j.bolt.BoltGraph.counts` returns (``labels``, ``types``).
    """
    if counts is None:
        return [("counts", missing)]
    pairs: list[tuple[str, Any]] = [("nodes", counts.get("nodes")), ("relationships", counts.get("relationships"))]
    pairs += [(f"nodes :{label}", n) for label, n in sorted((counts.get("labels") or {}).items())]
    pairs += [(f"relationships :{rel}", n) for rel, n in sorted((counts.get("types") or {}).items())]
    for what in ("indexes", "constraints"):
        if counts.get(what) is not None:
            pairs.append((what, len(counts[what])))
    return pairs


def neo4j_key(kind: str, target: str, database: str) -> str:
    """``seedvault-neo4j-<kind>-<target block>-<database>``: most servers call their database ``neo4j``."""
    return artifact_key("seedvault-neo4j", kind, target, database)


def publish_neo4j_backup_artifact(summary: dict[str, Any], repository: str, target: str, where: str) -> UUID:
    seconds = summary.get("seconds", {})
    verify = summary.get("verify") or {}
    down = summary.get("downtime_seconds")
    chain = summary.get("chain") or []
    pairs: list[tuple[str, Any]] = [
        ("id", summary["id"]),
        ("status", "completed" + (", verified" if verify else "")),
        ("database", summary["database"]),
        ("server", where),
        ("repository", repository),
        ("mode", summary["mode"] + (f" {summary['backup_type']}" if summary.get("backup_type") else "")),
        ("parent", summary.get("parent")),
        ("chain length", len(chain) if chain else None),
        ("neo4j", f"{summary['version']} {summary.get('edition') or ''}".strip() if summary.get("version") else None),
        ("finished", summary.get("finished")),
        ("attempts", summary.get("attempt")),
        ("raw size", human_bytes(summary["raw_size"])),
        ("stored size", human_bytes(summary["stored_size"])),
        ("ratio raw/stored", summary.get("ratio")),
        ("downtime s", round(down, 3) if down is not None else "none (database kept running)"),
    ]
    pairs += [(f"{phase} s", seconds.get(phase)) for phase in ("counts", summary["mode"], "total")]
    pairs.append(("verify s", verify.get("seconds")))
    pairs += neo4j_count_rows(summary.get("counts"), missing="not recorded (no Bolt URI)")
    return create_table_artifact(
        _rows(pairs),
        key=neo4j_key("backup", target, summary["database"]),
        description=f"seedvault backup {summary['id']} of Neo4j database {summary['database']} ({summary['mode']})",
    )


def publish_neo4j_restore_artifact(report: dict[str, Any], target: str, where: str) -> UUID:
    seconds = report.get("seconds", {})
    down = report.get("downtime")
    pairs: list[tuple[str, Any]] = [
        ("backup id", report["backup_id"]),
        ("status", "restored" + (", counts verified" if report.get("counts") is not None else "")),
        ("database", report["database"]),
        ("server", where),
        ("mode", report["mode"]),
        ("safety copy", report.get("safety_copy") or "none (declined)"),
        ("downtime s", round(down, 3) if down is not None else None),
        ("verify backup s", report.get("verify_seconds")),
        ("safety copy s", seconds.get("safety_copy")),
        ("total s", seconds.get("total")),
    ]
    pairs += neo4j_count_rows(report.get("counts"), missing="not checked (no Bolt URI)")
    return create_table_artifact(
        _rows(pairs),
        key=neo4j_key("restore", target, report["database"]),
        description=f"seedvault restore of {report['backup_id']} into Neo4j database {report['database']}",
    )


def publish_neo4j_failure_artifact(kind: str, target: str, database: str, reason: str) -> UUID:
    """Under its own key (:func:`failure_key`), never over the success artifact."""
    return create_table_artifact(
        _rows([("status", "failed"), ("database", database), ("reason", reason)]),
        key=failure_key("neo4j", kind, target, database),
        description=f"seedvault {kind} of Neo4j database {database} failed",
    )
