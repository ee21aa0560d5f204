"""The ``prune`` and ``verify-repository`` flows, and the prune that ends each backup flow (issue 14, item 8):
what they delete or read, and the table artifacts that say what and why."""

from __future__ import annotations

import json
import uuid

import pytest

from flows.backup_postgres import backup_postgres_flow
from flows.prune import prune_flow
from flows.verify_repository import verify_repository_flow
from seedvault.errors import UsageError, VerificationFailed
from seedvault.format import layout
from seedvault.units import human_bytes
from tests.helpers import base_env, run_cli
from tests.prefect.api import latest_table, task_runs

KEEP_ONE = {"keep_within": "0s", "keep_last": 1, "min_verified": 0}


@pytest.fixture
def kept_one(prefect_harness, saved_blocks, tmp_path):
    """A local repository block with the policy 'keep the newest only', holding three put backups."""
    from blocks import SeedvaultRepository

    root = tmp_path / "repo"
    name = f"prune-{uuid.uuid4().hex[:8]}"
    SeedvaultRepository(local_path=str(root), retention=KEEP_ONE).save(name, overwrite=True)
    key = tmp_path / "key"
    key.write_text(saved_blocks.raw_key + "\n")
    key.chmod(0o600)
    env = base_env(SEEDVAULT_REPOSITORY=f"file://{root}", SEEDVAULT_KEY_FILE=str(key))
    ids = [
        run_cli(["put", "--label", "a"], env, input=bytes([i]) * 50_000, check=True).stdout.decode().strip()
        for i in range(3)
    ]
    return name, root, env, ids


def _listed(env) -> list[str]:
    return [row["id"] for row in json.loads(run_cli(["list", "--json"], env, check=True).stdout)]


def test_prune_flow_dry_run_then_deletes_and_the_artifact_says_why(kept_one, saved_blocks):
    name, root, env, ids = kept_one
    dry = prune_flow(repository=name, key=saved_blocks.key, dry_run=True)
    assert dry["would_delete"] == ids[:2] and dry["deleted_backups"] == [] and _listed(env) == ids
    key = f"seedvault-prune-{str(root).strip('/').replace('/', '-').replace('_', '-').lower()}"[:100]
    rows, _ = latest_table(key)
    assert [(r["item"], r["decision"]) for r in rows[:3]] == [
        (ids[0], "delete (dry run)"), (ids[1], "delete (dry run)"), (ids[2], "keep"),
    ]  # fmt: skip
    done = prune_flow(repository=name, key=saved_blocks.key)
    assert done["deleted_backups"] == ids[:2] and done["bytes_freed"] > 0 and _listed(env) == ids[2:]
    rows, _ = latest_table(key)
    by_item = {r["item"]: r for r in rows}
    assert by_item[ids[0]]["decision"] == "deleted"
    assert by_item[ids[0]]["why"] == "outside the policy (keep_within 0s, keep_last 1, min_verified 0)"
    assert by_item[ids[2]]["why"] == "keep_last 1"
    assert by_item["total"]["why"] == f"{human_bytes(done['bytes_freed'])} freed"


def test_verify_flow_reads_everything_and_fails_naming_the_bad_backup(kept_one, saved_blocks):
    name, root, env, ids = kept_one
    ok = verify_repository_flow(repository=name, key=saved_blocks.key, scope="all")
    assert ok["backups"] == 3 and ok["objects"] == 3 and ok["bytes"] == 3 * 50_000
    sample = verify_repository_flow(repository=name, key=saved_blocks.key, scope="sample", percent=50)
    assert sample["backups"] == 3 and sample["objects"] <= 3
    (data,) = (root / layout.BACKUPS / ids[1] / "data").iterdir()
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    data.chmod(0o600)
    data.write_bytes(bytes(blob))
    state = verify_repository_flow(repository=name, key=saved_blocks.key, scope="all", return_state=True)
    assert state.is_failed()
    with pytest.raises(VerificationFailed, match=f"1 of 3 backups failed verification; {ids[1]}: "):
        state.result()
    # A bad object is bad on every read: no retry (it only delayed the failure and its message by a minute).
    (verify_run,) = [r for r in task_runs(state.state_details.flow_run_id) if r.name.startswith("verify-repository")]
    assert verify_run.run_count == 1 and verify_run.state.is_failed()
    key = f"seedvault-verify-all-{str(root).strip('/').replace('/', '-').replace('_', '-').lower()}"[:100]
    rows, _ = latest_table(key)
    assert [(r["item"], r["ok"]) for r in rows] == [(ids[0], True), (ids[1], False), (ids[2], True), ("total", False)]
    with pytest.raises(UsageError, match="scope must be one of sample, all, latest, wal"):
        verify_repository_flow(repository=name, key=saved_blocks.key, scope="everything")


def test_a_backup_flow_ends_with_a_prune_after_its_verify(saved_blocks, tmp_path):
    from blocks import SeedvaultRepository

    name = f"prune-pg-{uuid.uuid4().hex[:8]}"
    SeedvaultRepository(local_path=str(tmp_path / "repo"), retention=KEEP_ONE).save(name, overwrite=True)
    params = dict(saved_blocks.params(), repository=name)
    first = backup_postgres_flow(**params, checksums=False)
    assert first["prune"]["deleted_backups"] == []  # the only backup is the newest
    second = backup_postgres_flow(**params, checksums=False)
    assert second["verify"]["objects"] == 2
    assert second["prune"]["deleted_backups"] == [first["id"]]
    off = backup_postgres_flow(**params, checksums=False, prune=False)
    assert "prune" not in off


def test_a_bad_retention_policy_is_refused_when_the_block_is_made():
    from pydantic import ValidationError

    from blocks import SeedvaultRepository

    with pytest.raises(ValidationError, match="unknown retention setting 'keep_forever'"):
        SeedvaultRepository(local_path="/tmp/x", retention={"keep_forever": 1})
