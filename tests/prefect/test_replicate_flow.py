"""The ``replicate`` flow and the restores' ``replica`` fallback (issue 17) through Prefect: blocks in, artifact out.

The engine's guarantees (manifests last, kill -9, corruption on arrival, policies) are tests/faults/
test_replicate.py; here: the flow copies and publishes ``seedvault-replication``, a copy wrong twice fails the
run with the one-line reason and the alert kind ``replication-failed``, and a restore flow whose repository is
unreachable restores from the replica and says so.
"""

from __future__ import annotations

import uuid

import pytest

from flows.backup_postgres import backup_postgres_flow
from flows.messages import kind_of
from flows.replicate import ARTIFACT, replicate_flow
from flows.restore_postgres import restore_postgres_flow
from seedvault.errors import ReplicationIncomplete, StorageUnreachable
from tests.prefect.conftest import table_hashes


def _latest_markdown(key: str) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    assert arts, f"no artifact {key}"
    return str(arts[0].data)


@pytest.fixture
def replica_block(prefect_harness, tmp_path) -> str:
    from blocks import SeedvaultRepository

    name = f"replica-{uuid.uuid4().hex[:8]}"
    SeedvaultRepository(local_path=str(tmp_path / "replica"), retention={"keep_within": "90d"}).save(name)
    return name


def test_replicate_flow_copies_publishes_and_a_restore_falls_back_to_the_replica(
    saved_blocks, replica_block, pg_server, source_db, scratch_db, tmp_path
) -> None:
    from blocks import SeedvaultRepository

    backup = backup_postgres_flow(**saved_blocks.params(), verify=False)
    result = replicate_flow(repository=saved_blocks.repository, key=saved_blocks.key, replica=replica_block)
    assert result["ok"] and (backup["id"] in result["copied_backups"] or result["present_backups"] >= 1)
    assert result["status"]["backups_lacking"] == [] and result["status"]["lag_seconds"] == 0
    text = _latest_markdown(ARTIFACT)
    assert "| result | ok |" in text and "| still lacking | 0 backups, 0 WAL files" in text
    # The first repository is gone (its directory): the restore reads the replica and says so.
    down = f"down-{uuid.uuid4().hex[:8]}"
    SeedvaultRepository(local_path=str(tmp_path / "no-such-dir")).save(down)
    params = {**saved_blocks.params(), "repository": down}
    report = restore_postgres_flow(**params, database=scratch_db, backup_id=backup["id"], replica=replica_block)
    assert "is unreachable" in report["read_from_replica"] and "reading from the replica" in report["read_from_replica"]
    assert table_hashes(pg_server, scratch_db) == table_hashes(pg_server, source_db.name)
    # Without the replica the same restore fails with the unreachable repository's one line.
    state = restore_postgres_flow(**params, database=scratch_db + "_x", backup_id=backup["id"], return_state=True)
    assert state.is_failed()
    with pytest.raises(StorageUnreachable, match="does not exist"):
        state.result()


def test_a_copy_wrong_twice_fails_the_run_as_replication_failed(saved_blocks, replica_block, monkeypatch) -> None:
    backup_postgres_flow(**saved_blocks.params(), verify=False)
    monkeypatch.setenv("SEEDVAULT_FAULT_CORRUPT_AT", "replicate-object-arrived")
    state = replicate_flow(repository=saved_blocks.repository, key=saved_blocks.key, replica=replica_block,
                           return_state=True)  # fmt: skip
    assert state.is_failed()
    with pytest.raises(ReplicationIncomplete, match="not replicated: .*wrong after a retry"):
        state.result()
    assert kind_of("replicate", state.name, state.message) == "replication-failed"
    assert "| result | FAILED: " in _latest_markdown(ARTIFACT)
