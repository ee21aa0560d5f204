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


def test_drill_never_drops_a_database_it_did_not_create(saved_blocks, source_db, pg_server):
    backup_postgres_flow(**saved_blocks.params(), verify=False)
    pg_server.create_database("sv_not_mine")
    try:
        with pytest.raises(TargetError, match="database sv_not_mine already exists"):
            dr_drill_flow(**saved_blocks.params(), scratch_database="sv_not_mine")
        assert "sv_not_mine" in _databases(pg_server)
    finally:
        pg_server.drop_database("sv_not_mine")
