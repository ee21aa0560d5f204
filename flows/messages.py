"""What a seedvault notification says: the alert kind, where it happened, the reason, the run, the RUNBOOK.

One message per failure (the flows' hooks, :mod:`flows.failures`) and one per missed backup (a proactive
automation). Every message carries the same five things, so a 3 a.m. reader needs nothing else:

* **what** failed, as an alert kind (:data:`ALERT_KINDS`), decided from the seedvault error class the run
  failed with (its name is in the state message: ``... exception: SizeAnomaly: ...``) and the flow;
* **where**: the store (postgres, neo4j, platform), the database, the deployment;
* the **reason**: the run's one-line state message (seedvault's operator one-liner; no secrets are ever put
  into an error message, and no parameter or block field other than names is copied into the text);
* a **link** to the run in the Prefect UI (``PREFECT_UI_URL``, or the API URL without ``/api``);
* the **RUNBOOK** section to follow (section 27 lists every kind and points on to the detailed section).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from seedvault import errors

# kind -> (what the message calls it, RUNBOOK section)
ALERT_KINDS: dict[str, tuple[str, str]] = {
    "backup-failed": ("backup failed", "27.1"),
    "upload-failed": ("upload failed", "27.2"),
    "size-anomaly": ("size anomaly", "27.3"),
    "encryption-failed": ("encryption failed", "27.4"),
    "verification-failed": ("verification failed", "27.5"),
    "drill-target-missed": ("RTO or RPO target missed in a drill", "27.6"),
    "wal-stale": ("WAL stale or gap", "27.7"),
    "key-age": ("master key older than its rotation age", "27.8"),
    "missed-backup": ("a backup did not happen", "27.9"),
    "crashed": ("run crashed (its process died)", "27.10"),
    "restore-failed": ("restore failed", "27.11"),
    "replication-failed": ("replication to the second repository failed", "27.12"),
    "replication-lag": ("the second repository lags behind", "27.12"),
    "drill-failed": ("DR drill failed", "27.6"),
    "failed": ("run failed", "27.11"),
}

_EXC = re.compile(r"exception: (?P<cls>[A-Za-z_][A-Za-z0-9_]*): ")


def store_of(flow_name: str, parameters: dict) -> str:
    if "platform" in flow_name or (flow_name == "dr-drill" and parameters.get("mode") == "platform"):
        return "platform"
    if "neo4j" in flow_name:
        return "neo4j"
    if flow_name in ("prune", "verify-repository", "replicate"):
        return "repository"
    return "postgres"


def error_class(message: str | None) -> type[BaseException] | None:
    """The seedvault error class named in a Prefect state message, if any."""
    match = _EXC.search(message or "")
    cls = getattr(errors, match.group("cls"), None) if match else None
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None


def kind_of(flow_name: str, state_name: str, message: str | None) -> str:
    """The alert kind of a failed or crashed run of ``flow_name``."""
    if state_name.lower() == "crashed":
        return "crashed"
    cls = error_class(message)
    checks: tuple[tuple[type[BaseException], str], ...] = (
        (errors.SizeAnomaly, "size-anomaly"),
        (errors.DrillTargetMissed, "drill-target-missed"),
        (errors.ReplicationLagging, "replication-lag"),
        (errors.WalStale, "wal-stale"),
        (errors.WalGap, "wal-stale"),
        (errors.ForeignWal, "wal-stale"),
        (errors.KeyError_, "encryption-failed"),
        (errors.IntegrityError, "verification-failed"),
        (errors.RestoreVerificationFailed, "verification-failed"),
    )
    for base, kind in checks:
        if cls is not None and issubclass(cls, base):
            return kind
    if flow_name.startswith("restore-"):
        return "restore-failed"
    if flow_name == "replicate":
        return "replication-failed"
    if flow_name == "dr-drill":
        return "drill-failed"
    if flow_name == "check-wal-freshness":
        return "wal-stale"
    if flow_name == "verify-repository":
        return "verification-failed"
    if flow_name.startswith("backup-"):
        storage = cls is not None and issubclass(cls, errors.StorageError)
        return "upload-failed" if storage else "backup-failed"
    return "failed"


@dataclass(frozen=True)
class Message:
    subject: str
    body: str


def failure_message(
    *,
    flow_name: str,
    run_name: str,
    state_name: str,
    reason: str | None,
    database: str | None,
    deployment: str | None,
    run_url: str | None,
    store: str,
) -> Message:
    kind = kind_of(flow_name, state_name, reason)
    what, section = ALERT_KINDS[kind]
    where = deployment or f"{flow_name} (no deployment)"
    subject = f"seedvault {kind}: {where} [{store}{' ' + database if database else ''}]"
    body = "\n".join(
        (
            f"What: {what}: {flow_name} run {run_name} {state_name}",
            f"Where: store {store}, database {database or '-'}, deployment {where}",
            f"Reason: {_one_line(reason)}",
            f"Run: {run_url or 'no Prefect UI URL known (set PREFECT_UI_URL)'}",
            f"Runbook: RUNBOOK.md section {section} ({what})",
        )
    )
    return Message(subject, body)


def recovered_message(
    *, flow_name: str, run_name: str, deployment: str, failed_run: str, database: str | None, run_url: str | None,
    store: str,
) -> Message:  # fmt: skip
    subject = f"seedvault recovered: {deployment} [{store}{' ' + database if database else ''}]"
    body = "\n".join(
        (
            f"What: recovered: {flow_name} run {run_name} completed after run {failed_run} had failed",
            f"Where: store {store}, database {database or '-'}, deployment {deployment}",
            f"Run: {run_url or 'no Prefect UI URL known (set PREFECT_UI_URL)'}",
        )
    )
    return Message(subject, body)


def missed_message(*, deployment: str, period_s: float, margin_s: float, ui_url: str | None) -> Message:
    what, section = ALERT_KINDS["missed-backup"]
    subject = f"seedvault missed-backup: {deployment}"
    body = "\n".join(
        (
            f"What: {what}: no completed run of {deployment} within {_span(period_s)} + {_span(margin_s)} margin",
            f"Where: deployment {deployment}",
            "Reason: the schedule did not run, or every run failed or is still running (the worker, the work pool"
            " or the schedule may be down or paused)",
            f"Run: {ui_url or 'no Prefect UI URL known (set PREFECT_UI_URL)'}",
            f"Runbook: RUNBOOK.md section {section} ({what})",
        )
    )
    return Message(subject, body)


def _one_line(text: str | None) -> str:
    if not text:
        return "no message"
    text = text.replace("Flow run encountered an exception: ", "")
    return " ".join(text.split())


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def status_alert_message(
    *, kind: str, alert_subject: str, text: str, repository: str, deployment: str | None, run_url: str | None
) -> Message:
    """A standing condition the status view found (e.g. ``key-age``), sent as a reminder by a daily run."""
    what, section = ALERT_KINDS[kind]
    subject = f"seedvault {kind}: {alert_subject} [{repository}]"
    body = "\n".join(
        (
            f"What: {what}: {alert_subject}",
            f"Where: repository {repository}, deployment {deployment or '-'}",
            f"Reason: {_one_line(text)}",
            f"Run: {run_url or 'no Prefect UI URL known (set PREFECT_UI_URL)'}",
            f"Runbook: RUNBOOK.md section {section} ({what})",
        )
    )
    return Message(subject, body)
