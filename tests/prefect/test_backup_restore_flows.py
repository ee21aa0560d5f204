"""backup-postgres and restore-postgres end to end on the harness, a real PostgreSQL and a local repository."""

from __future__ import annotations

import pytest

from flows.backup_postgres import backup_postgres_flow
from flows.restore_postgres import restore_postgres_flow
from seedvault.errors import BackupNotFound
from seedvault.units import human_bytes
from tests.prefect.api import as_fields, child_flow_runs, latest_table, task_runs
from tests.prefect.conftest import table_hashes

STAGES = {"read", "compress", "encrypt", "upload"}


def test_backup_flow_streams_as_tasks_verifies_and_publishes_artifact(saved_blocks, source_db):
    state = backup_postgres_flow(**saved_blocks.params(), retry_delay_seconds=0, return_state=True)
    summary = state.result()
    assert summary["attempt"] == 1 and summary["database"] == source_db.name
    assert summary["table_rows"]["public.orders"] == source_db.counts["orders"]
    assert summary["table_rows"]["public.blobs"] == source_db.counts["blobs"]
    assert summary["verify"]["objects"] == 2 and summary["verify"]["bytes"] == summary["raw_size"]

    # The stream ran as one subflow attempt whose four stages per object were tasks, all with retries off.
    (child,) = child_flow_runs(state.state_details.flow_run_id)
    assert child.run_count == 1 and child.state.is_completed()
    stages = task_runs(child.id)
    by_name = {t.name: t for t in stages}
    assert set(by_name) == {f"{s}-{obj}" for s in STAGES for obj in ("dump", "globals")}
    assert all(t.state.is_completed() and t.empirical_policy.retries == 0 for t in stages)
    parent_tasks = {t.name.rsplit("-", 1)[0] for t in task_runs(state.state_details.flow_run_id)}
    assert {"preflight", "verify-backup"} <= parent_tasks

    # The artifact: id, sizes, ratio, per-step seconds and row counts.
    rows, artifact = latest_table(f"seedvault-backup-{source_db.name.replace('_', '-')}")
    fields = as_fields(rows)
    assert artifact.flow_run_id == state.state_details.flow_run_id
    assert fields["id"] == summary["id"] and fields["status"] == "completed, verified"
    assert fields["raw size"] == human_bytes(summary["raw_size"]) and summary["raw_size"] > summary["stored_size"] > 0
    assert fields["stored size"] == human_bytes(summary["stored_size"])  # human-readable, as everywhere
    assert fields["ratio raw/stored"] == summary["ratio"]
    assert all(f"{s} s" in fields for s in ("read", "compress", "encrypt", "hash", "upload", "total"))
    assert fields["rows public.customers"] == source_db.counts["customers"]
    assert fields["rows telemetry.readings"] == source_db.counts["readings"]
    assert fields["total rows"] == sum(summary["table_rows"].values())


def test_restore_flow_restores_latest_and_verifies(saved_blocks, source_db, pg_server, scratch_db):
    backup = backup_postgres_flow(**saved_blocks.params(), verify=False)
    report = restore_postgres_flow(**saved_blocks.params(), database=scratch_db)
    assert report["backup_id"] == backup["id"], "without an id the latest backup of the database is restored"
    assert report["tables_verified"] == len(backup["table_rows"]) == report["checksums_verified"]
    assert report["rows_verified"] == backup["total_rows"]
    assert table_hashes(pg_server, scratch_db) == table_hashes(pg_server, source_db.name)
    fields = as_fields(latest_table(f"seedvault-restore-{scratch_db.replace('_', '-')}")[0])
    assert fields["backup id"] == backup["id"] and fields["rows verified"] == backup["total_rows"]


def test_restore_of_unknown_database_fails_with_operator_message(saved_blocks, scratch_db):
    with pytest.raises(BackupNotFound) as info:
        restore_postgres_flow(**saved_blocks.params(), database=scratch_db, source_database="no_such_db")
    assert str(info.value).startswith("no complete backup of database no_such_db in file://")
