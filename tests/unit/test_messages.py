"""What a notification says: the alert kind from the error class and flow, the five lines, no guessing."""

from __future__ import annotations

import pytest

from flows.messages import ALERT_KINDS, failure_message, kind_of, missed_message, store_of


@pytest.mark.parametrize(
    ("flow", "state", "message", "kind"),
    [
        ("backup-postgres", "Failed", "Flow run encountered an exception: DatabaseRefused: refused", "backup-failed"),
        ("backup-postgres", "Failed", "Flow run encountered an exception: StorageUnreachable: S3", "upload-failed"),
        ("backup-neo4j", "Failed", "Flow run encountered an exception: TransientStorageError: 503", "upload-failed"),
        ("backup-postgres", "Failed", "Flow run encountered an exception: SizeAnomaly: 1 MiB", "size-anomaly"),
        ("backup-postgres", "Failed", "Flow run encountered an exception: WrongKey: not this key", "encryption-failed"),
        ("verify-repository", "Failed", "... exception: ChecksumMismatch: x", "verification-failed"),
        ("restore-postgres", "Failed", "Flow run encountered an exception: RestoreVerificationFailed: x",
         "verification-failed"),
        ("dr-drill", "Failed", "Flow run encountered an exception: DrillTargetMissed: RTO", "drill-target-missed"),
        ("dr-drill", "Failed", "Flow run encountered an exception: DatabaseRefused: x", "drill-failed"),
        ("check-wal-freshness", "Failed", "Flow run encountered an exception: WalStale: lag", "wal-stale"),
        ("verify-repository", "Failed", "Flow run encountered an exception: WalGap: hole", "wal-stale"),
        ("restore-neo4j", "Failed", "Flow run encountered an exception: SourceError: x", "restore-failed"),
        ("backup-postgres", "Crashed", "Process exited with status code: -9", "crashed"),
        ("backup-postgres", "Failed", "Flow run encountered an exception: ValueError: bug", "backup-failed"),
        ("prune", "Failed", "Flow run encountered an exception: LockHeld: busy", "failed"),
    ],
)  # fmt: skip
def test_kind_from_error_class_and_flow(flow, state, message, kind):
    assert kind_of(flow, state, message) == kind
    assert kind in ALERT_KINDS


def test_failure_message_has_the_five_lines():
    msg = failure_message(flow_name="backup-neo4j", run_name="brave-owl", state_name="Failed",
                          reason="Flow run encountered an exception: SourceError: neo4j-admin failed",
                          database="neo4j", deployment="backup-neo4j/nightly-0200-utc",
                          run_url="http://ui/runs/flow-run/1", store="neo4j")  # fmt: skip
    assert msg.subject == "seedvault backup-failed: backup-neo4j/nightly-0200-utc [neo4j neo4j]"
    assert msg.body.splitlines() == [
        "What: backup failed: backup-neo4j run brave-owl Failed",
        "Where: store neo4j, database neo4j, deployment backup-neo4j/nightly-0200-utc",
        "Reason: SourceError: neo4j-admin failed",
        "Run: http://ui/runs/flow-run/1",
        "Runbook: RUNBOOK.md section 27.1 (backup failed)",
    ]


def test_store_and_missed_message():
    assert store_of("dr-drill", {"mode": "platform"}) == "platform" and store_of("dr-drill", {}) == "postgres"
    assert store_of("restore-neo4j", {}) == "neo4j" and store_of("prune", {}) == "repository"
    msg = missed_message(deployment="backup-postgres/nightly-0200-utc", period_s=86400, margin_s=3600, ui_url=None)
    assert "within 24 h + 1 h margin" in msg.body and "section 27.9" in msg.body


def test_every_runbook_section_named_exists():
    from pathlib import Path

    runbook = (Path(__file__).parents[2] / "RUNBOOK.md").read_text()
    for _what, section in ALERT_KINDS.values():
        assert f"\n### {section} " in runbook, section
