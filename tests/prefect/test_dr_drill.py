"""dr-drill: the latest backup is verified, restored into a scratch database, checked, and the scratch dropped."""

from __future__ import annotations

import pytest

from flows.backup_postgres import backup_postgres_flow
from flows.dr_drill import dr_drill_flow
from seedvault.errors import TargetError
from tests.prefect.api import as_fields, latest_table


def _databases(pg_server) -> set[str]:
    with pg_server.connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def test_drill_restores_latest_backup_verifies_and_drops_scratch(saved_blocks, source_db, pg_server):
    backup = backup_postgres_flow(**saved_blocks.params(), verify=False)
    result = dr_drill_flow(**saved_blocks.params())
    assert result["backup_id"] == backup["id"] and result["source"] == source_db.name
    assert result["tables_verified"] == result["checksums_verified"] == len(backup["table_rows"])
    assert result["rows_verified"] == backup["total_rows"]
    assert result["verify"]["bytes"] == backup["raw_size"]
    scratch = result["scratch_database"]
    assert scratch.startswith(f"{source_db.name}_drill_") and scratch not in _databases(pg_server)
    assert source_db.name in _databases(pg_server)

    fields = as_fields(latest_table(f"seedvault-dr-drill-{source_db.name.replace('_', '-')}")[0])
    assert fields["backup id"] == backup["id"] and fields["drill of"] == source_db.name
    assert fields["rows verified"] == backup["total_rows"] and fields["checksums verified"] == len(backup["table_rows"])
    assert fields["scratch database"] == f"{scratch} (dropped)" and fields["backup age h"] >= 0
    # RTO and RPO against their targets (defaults: 1 h, and a day plus an hour for a logical backup).
    assert fields["status"] == "passed" and fields["RTO"] == "pass" and fields["RPO"] == "pass"
    assert float(fields["RTO s"]) == pytest.approx(result["rto"]["seconds"], abs=0.001) and result["rto"]["seconds"] > 0
    assert fields["RTO target s"] == "3600.000" and fields["RPO target s"] == "90000.000"

    # A tiny RTO target: restored and verified all the same, then the run fails, after the artifact and event.
    from seedvault.errors import DrillTargetMissed

    with pytest.raises(DrillTargetMissed, match="RTO .* missed the target of 0.001 s"):
        dr_drill_flow(**saved_blocks.params(), rto_target=0.001)
    fields = as_fields(latest_table(f"seedvault-dr-drill-{source_db.name.replace('_', '-')}")[0])
    assert fields["status"] == "FAILED" and fields["RTO"] == "FAIL" and fields["RPO"] == "pass"
    from blocks import SeedvaultEncryptionKey, SeedvaultRepository
    from seedvault.ops.status import compute_status

    repo = SeedvaultRepository.load(saved_blocks.repository).open(
        SeedvaultEncryptionKey.load(saved_blocks.key).key_source()
    )
    (group,) = [g for g in compute_status(repo, with_usage=False).groups if g.label == source_db.name]
    assert group.drill["result"] == "failed" and group.drill["mode"] == "postgres" and group.drill["missed"] == ["rto"]


def test_drill_never_drops_a_database_it_did_not_create(saved_blocks, source_db, pg_server):
    backup_postgres_flow(**saved_blocks.params(), verify=False)
    pg_server.create_database("sv_not_mine")
    try:
        with pytest.raises(TargetError, match="database sv_not_mine already exists"):
            dr_drill_flow(**saved_blocks.params(), scratch_database="sv_not_mine")
        assert "sv_not_mine" in _databases(pg_server)
    finally:
        pg_server.drop_database("sv_not_mine")
